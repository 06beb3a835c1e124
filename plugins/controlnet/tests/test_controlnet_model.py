"""ControlNetModel / MultiControlNetModel against Diffusers: same folder, same residuals; seeded builds match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
from difflux_controlnet import ControlNetModel, MultiControlNetModel
from difflux_models import UNet2DConditionModel

TOL = 1e-4


def _inputs(config: dict[str, Any], batch: int = 2, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    kw: dict[str, Any] = {
        "sample": torch.randn(batch, 4, 16, 16, generator=g),
        "timestep": 321,
        "encoder_hidden_states": torch.randn(batch, 7, config["cross_attention_dim"], generator=g),
        "controlnet_cond": torch.rand(batch, 3, 32, 32, generator=g),
    }
    if config.get("addition_embed_type") == "text_time":
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 32, generator=g),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * batch),
        }
    return kw


def _residuals(model: Any, **kw: Any) -> tuple[list[torch.Tensor], torch.Tensor]:
    with torch.no_grad():
        out = model(**kw, return_dict=False)
    return list(out[0]), out[1]


def _assert_same(a: tuple[list[torch.Tensor], torch.Tensor], b: tuple[list[torch.Tensor], torch.Tensor]) -> None:
    assert len(a[0]) == len(b[0])
    for x, y in zip(a[0], b[0], strict=True):
        assert x.shape == y.shape
        assert (x - y).abs().max().item() <= TOL
    assert a[1].shape == b[1].shape
    assert (a[1] - b[1]).abs().max().item() <= TOL
    assert a[1].abs().max().item() > 1e-3  # random weights: the residuals are not trivially zero


@pytest.mark.parametrize("layout", ["sd", "sdxl"])
@pytest.mark.parametrize(
    "options", [{}, {"conditioning_scale": 0.6}, {"guess_mode": True, "conditioning_scale": 0.8}], ids=str
)
def test_loaded_controlnet_gives_diffusers_residuals(
    cn: Any, saved_controlnets: dict[str, tuple[Any, Path]], layout: str, options: dict[str, Any]
) -> None:
    ref, folder = saved_controlnets[layout]
    ours = ControlNetModel.from_pretrained(folder)
    assert list(ours.state_dict()) == list(ref.state_dict())
    config = cn.SD_CONFIG if layout == "sd" else cn.SDXL_CONFIG
    kw = {**_inputs(config), **options}
    _assert_same(_residuals(ref, **kw), _residuals(ours, **kw))


@pytest.mark.parametrize(
    "overrides",
    [
        {"controlnet_conditioning_channel_order": "bgr"},
        {"global_pool_conditions": True},
        {"mid_block_type": "UNetMidBlock2D"},
    ],
    ids=str,
)
def test_config_options_match_diffusers(cn: Any, tmp_path: Path, overrides: dict[str, Any]) -> None:
    ref = cn.diffusers_controlnet(1, cn.SD_CONFIG, **overrides)
    ref.save_pretrained(tmp_path / "cn")
    ours = ControlNetModel.from_pretrained(tmp_path / "cn")
    kw = _inputs(cn.SD_CONFIG, seed=3)
    _assert_same(_residuals(ref, **kw), _residuals(ours, **kw))


@pytest.mark.parametrize("layout", ["sd", "sdxl"])
def test_difflux_saved_controlnet_loads_in_diffusers(
    cn: Any, saved_controlnets: dict[str, tuple[Any, Path]], tmp_path: Path, layout: str
) -> None:
    ref, folder = saved_controlnets[layout]
    ControlNetModel.from_pretrained(folder).save_pretrained(tmp_path / "ours")
    back = diffusers.ControlNetModel.from_pretrained(tmp_path / "ours").eval()
    config = cn.SD_CONFIG if layout == "sd" else cn.SDXL_CONFIG
    kw = _inputs(config, seed=5)
    _assert_same(_residuals(ref, **kw), _residuals(back, **kw))


@pytest.mark.parametrize("layout", ["sd", "sdxl"])
def test_seeded_build_matches_diffusers(cn: Any, layout: str) -> None:
    config = cn.SD_CONFIG if layout == "sd" else cn.SDXL_CONFIG
    torch.manual_seed(7)
    ref = diffusers.ControlNetModel(**config).state_dict()
    torch.manual_seed(7)
    ours = ControlNetModel(**config).state_dict()
    assert list(ours) == list(ref)
    for key in ref:
        assert torch.equal(ours[key], ref[key]), key
    # the zero convolutions start at zero: a fresh ControlNet adds nothing
    assert all(not v.any() for k, v in ours.items() if k.startswith(("controlnet_down_blocks", "controlnet_mid")))


@pytest.mark.parametrize("sdxl", [False, True])
def test_from_unet_matches_diffusers(cn: Any, tmp_path: Path, sdxl: bool) -> None:
    extra: dict[str, Any] = {}
    if sdxl:
        extra = {
            k: cn.SDXL_CONFIG[k]
            for k in (
                "attention_head_dim",
                "use_linear_projection",
                "addition_embed_type",
                "addition_time_embed_dim",
                "transformer_layers_per_block",
                "projection_class_embeddings_input_dim",
                "cross_attention_dim",
            )
        }
    ref_unet = cn.randomize(cn.diffusers_unet(0, **extra), 11)
    ref_unet.save_pretrained(tmp_path / "unet")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    torch.manual_seed(3)
    ref = diffusers.ControlNetModel.from_unet(ref_unet, conditioning_embedding_out_channels=(16, 32))
    torch.manual_seed(3)
    ours = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    for k in ("addition_embed_type", "transformer_layers_per_block", "block_out_channels", "cross_attention_dim"):
        assert ours.config[k] == ref.config[k] or list(ours.config[k]) == list(ref.config[k]), k
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    key = "down_blocks.1.resnets.0.conv1.weight"
    assert torch.equal(b[key], unet.state_dict()[key])


def test_multicontrolnet_sums_and_saves_like_diffusers(cn: Any, tmp_path: Path) -> None:
    refs = [cn.diffusers_controlnet(s, cn.SD_CONFIG) for s in (0, 1)]
    ref = diffusers.models.controlnets.MultiControlNetModel(refs)
    ref.save_pretrained(str(tmp_path / "controlnet"))
    ours = MultiControlNetModel._from_folder(tmp_path / "controlnet", difflux_options())
    assert len(ours.nets) == 2
    kw = _inputs(cn.SD_CONFIG)
    images = [kw.pop("controlnet_cond"), torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))]
    multi = {**kw, "controlnet_cond": images, "conditioning_scale": [0.5, 1.2]}
    _assert_same(_residuals(ref, **multi), _residuals(ours, **multi))
    # difflux saves net i into <dir>_i, which Diffusers loads back
    ours.save_pretrained(tmp_path / "again" / "controlnet")
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["controlnet", "controlnet_1"]
    back = diffusers.models.controlnets.MultiControlNetModel.from_pretrained(str(tmp_path / "again" / "controlnet"))
    _assert_same(_residuals(ref, **multi), _residuals(back, **multi))


def difflux_options() -> Any:
    from difflux.options import LoadOptions

    return LoadOptions()


def test_multicontrolnet_errors(cn: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        MultiControlNetModel([])
    with pytest.raises(ValueError, match="instance of ControlNetModel"):
        MultiControlNetModel([torch.nn.Linear(1, 1)])  # type: ignore[list-item]
    torch.manual_seed(0)
    multi = MultiControlNetModel([ControlNetModel(**cn.SD_CONFIG)])
    kw = _inputs(cn.SD_CONFIG)
    with pytest.raises(ValueError, match="1 nets but got 2 condition images"):
        multi(**{**kw, "controlnet_cond": [kw["controlnet_cond"]] * 2, "conditioning_scale": [1.0]})
    with pytest.raises(FileNotFoundError, match="no ControlNet folder"):
        MultiControlNetModel._from_folder(tmp_path / "missing", difflux_options())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"block_out_channels": (4, 8, 8)}, "block_out_channels has 3 entries"),
        ({"controlnet_conditioning_channel_order": "rbg"}, "'rgb' or 'bgr'"),
        ({"addition_embed_type": "text_time"}, "needs addition_time_embed_dim"),
        ({"mid_block_type": "UNetMidBlock2DSimpleCrossAttn"}, "mid_block_type must be"),
        ({"encoder_hid_dim_type": "text_proj"}, "needs encoder_hid_dim"),
    ],
)
def test_bad_config_is_a_clear_error(cn: Any, overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ControlNetModel(**{**cn.SD_CONFIG, **overrides})


def test_sdxl_controlnet_needs_added_cond_kwargs(cn: Any) -> None:
    torch.manual_seed(0)
    model = ControlNetModel(**cn.SDXL_CONFIG)
    kw = _inputs(cn.SDXL_CONFIG)
    kw["added_cond_kwargs"] = {"text_embeds": kw["added_cond_kwargs"]["text_embeds"]}
    with pytest.raises(ValueError, match="pass time_ids in added_cond_kwargs"):
        model(**kw)
