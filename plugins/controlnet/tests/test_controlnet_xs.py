"""ControlNetXSAdapter / UNetControlNetXSModel and the SD / SDXL ControlNet-XS pipelines against Diffusers 0.42.1.

Tiny layouts: the pipelines use two-block UNets; the published-layout tests use the block types of the
published SD 2.1 (3 x CrossAttnDownBlock2D + DownBlock2D) and SDXL (DownBlock2D + 2 x CrossAttnDownBlock2D,
``text_time``) ControlNet-XS checkpoints at tiny widths. Diffusers builds, randomises and saves; difflux
loads the folders (and Diffusers loads difflux's). Comparisons run against Diffusers models reloaded from
the saved folder (Diffusers' in-memory ``from_unet`` sizes the control mid block's GroupNorm with the
adapter's cap of 32 groups, its config-built model with ``ctrl_max_norm_num_groups``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

PROMPT = "a photo of a cat on the red horse"

SD_UNET: dict[str, Any] = {
    "block_out_channels": (4, 8),
    "layers_per_block": 2,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "norm_num_groups": 2,
    "attention_head_dim": 2,
}
XL_UNET: dict[str, Any] = {
    "block_out_channels": (4, 8),
    "layers_per_block": 2,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
    "cross_attention_dim": 64,
    "norm_num_groups": 2,
}
#: the published SD 2.1 layout at tiny widths
SD21_UNET: dict[str, Any] = {
    **SD_UNET,
    "block_out_channels": (4, 8, 8, 8),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "use_linear_projection": True,
    "upcast_attention": True,
}
#: the published SDXL layout at tiny widths
SDXL_UNET: dict[str, Any] = {
    **XL_UNET,
    "block_out_channels": (4, 8, 8),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4, 4),
    "transformer_layers_per_block": (1, 2, 2),
}
CTRL = {"conditioning_embedding_out_channels": (16, 32)}


def _randomized(model: Any, seed: int) -> Any:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def ref_unet(config: dict[str, Any]) -> Any:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**config)


def ref_adapter(unet: Any, widths: list[int], seed: int = 0, **kw: Any) -> Any:
    torch.manual_seed(seed)
    adapter = diffusers.ControlNetXSAdapter.from_unet(unet, block_out_channels=widths, **{**CTRL, **kw})
    return _randomized(adapter, seed + 10)


def ref_fused(tmp: Path, config: dict[str, Any], widths: list[int], **kw: Any) -> tuple[Any, Path]:
    """A randomised Diffusers UNetControlNetXSModel, saved and reloaded: ``(model, folder)``."""
    unet = ref_unet(config)
    fused = _randomized(diffusers.UNetControlNetXSModel.from_unet(unet, ref_adapter(unet, widths, **kw)), 3)
    fused.save_pretrained(tmp)
    return diffusers.UNetControlNetXSModel.from_pretrained(tmp).eval(), tmp


def _inputs(cn: Any, width: int, xl: bool) -> dict[str, Any]:
    g = cn.gen(1)
    kw: dict[str, Any] = {
        "sample": torch.randn(2, 4, 16, 16, generator=g),
        "timestep": 10,
        "encoder_hidden_states": torch.randn(2, 7, width, generator=g),
        "controlnet_cond": torch.rand(2, 3, 32, 32, generator=g),
    }
    if xl:
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.rand(2, 6) * 64}
    return kw


# -- the models ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "widths", "extra"),
    [
        (SD_UNET, [2, 6], {}),
        (SD21_UNET, [2, 4, 4, 4], {"learn_time_embedding": True, "time_embedding_mix": 0.5}),
        (SDXL_UNET, [2, 4, 4], {}),
    ],
    ids=["sd-tiny", "sd21-layout-learned-time", "sdxl-layout"],
)
def test_fused_model_loads_and_matches(
    tmp_path: Path, cn: Any, config: dict[str, Any], widths: list[int], extra: dict[str, Any]
) -> None:
    from difflux_controlnet import UNetControlNetXSModel

    ref, folder = ref_fused(tmp_path / "ref", config, widths, **extra)
    ours = UNetControlNetXSModel.from_pretrained(folder)
    kw = _inputs(cn, config["cross_attention_dim"], "addition_embed_type" in config)
    with torch.no_grad():
        for options in ({}, {"conditioning_scale": 0.6}, {"apply_control": False}):
            a = ref(**kw, **options).sample
            b = ours(**kw, **options).sample
            assert cn.max_diff(a, b) <= 1e-5, options
        on, off = b, ours(**kw).sample
    assert cn.max_diff(on, off) > 1e-3  # the control branch does steer
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.UNetControlNetXSModel.from_pretrained(tmp_path / "ours")
    assert set(back.state_dict()) == set(ours.state_dict())
    with torch.no_grad():
        assert cn.max_diff(back(**kw).sample, ours(**kw).sample) <= 1e-5


def test_adapter_round_trip_and_from_unet(tmp_path: Path, cn: Any) -> None:
    """ControlNetXSAdapter loads both ways; from_unet fuses a difflux UNet and adapter as Diffusers does."""
    from difflux_controlnet import ControlNetXSAdapter, UNetControlNetXSModel
    from difflux_models import UNet2DConditionModel

    unet = _randomized(ref_unet(SDXL_UNET), 4)
    adapter = ref_adapter(unet, [2, 4, 4], seed=5)
    unet.save_pretrained(tmp_path / "unet")
    adapter.save_pretrained(tmp_path / "adapter")
    ours_adapter = ControlNetXSAdapter.from_pretrained(tmp_path / "adapter")
    ours_unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    ours_adapter.save_pretrained(tmp_path / "adapter-ours")
    back = diffusers.ControlNetXSAdapter.from_pretrained(tmp_path / "adapter-ours")
    assert set(back.state_dict()) == set(adapter.state_dict())
    with pytest.raises(ValueError, match="cannot run by itself"):
        ours_adapter(torch.zeros(1))

    fused = UNetControlNetXSModel.from_unet(ours_unet, ours_adapter)
    ref = diffusers.UNetControlNetXSModel.from_unet(unet, adapter)
    ref_state, state = ref.state_dict(), fused.state_dict()
    assert set(ref_state) == set(state)
    assert max(cn.max_diff(ref_state[k], state[k]) for k in state) == 0.0

    def norm(v: Any) -> Any:
        return list(v) if isinstance(v, (list, tuple)) else v

    for key, value in ref.config.items():
        if not key.startswith("_"):
            assert norm(fused.config[key]) == norm(value), key
    # a fresh adapter from a size ratio starts at zero: the fused model predicts what the UNet does
    fresh = UNetControlNetXSModel.from_unet(ours_unet, size_ratio=0.5, ctrl_optional_kwargs=CTRL)
    kw = _inputs(cn, 64, True)
    with torch.no_grad():
        plain = ours_unet(
            kw["sample"], 10, kw["encoder_hidden_states"], added_cond_kwargs=kw["added_cond_kwargs"]
        ).sample
        assert cn.max_diff(fresh(**kw).sample, plain) <= 1e-5
    with pytest.raises(ValueError, match="exactly one of"):
        ControlNetXSAdapter.from_unet(ours_unet)
    with pytest.raises(ValueError, match="pass none of"):
        UNetControlNetXSModel.from_unet(ours_unet, ours_adapter, size_ratio=0.5)


def test_config_errors() -> None:
    from difflux_controlnet import ControlNetXSAdapter, UNetControlNetXSModel

    with pytest.raises(ValueError, match="time_embedding_mix < 1 needs ctrl_learn_time_embedding"):
        UNetControlNetXSModel(time_embedding_mix=0.5)
    with pytest.raises(ValueError, match="addition_embed_type must be None or 'text_time'"):
        UNetControlNetXSModel(addition_embed_type="text")
    with pytest.raises(ValueError, match="conditioning_channel_order"):
        ControlNetXSAdapter(conditioning_channel_order="yuv")


# -- the pipelines -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xs_pairs(tmp_path_factory: pytest.TempPathFactory, cn: Any) -> dict[str, tuple[Any, Any]]:
    """``{"sd" | "xl": (Diffusers pipeline reloaded from its folder, the difflux one loaded from it)}``."""
    root = tmp_path_factory.mktemp("xs-pipes")
    sd_unet = ref_unet(SD_UNET)
    sd = diffusers.StableDiffusionControlNetXSPipeline(
        vae=cn.diffusers_vae(0),
        text_encoder=tiny_clip_text_model(0),
        tokenizer=tiny_clip_tokenizer(root / "vocab"),
        unet=sd_unet,
        controlnet=ref_adapter(sd_unet, [2, 6]),
        scheduler=diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _randomized(sd.unet, 7)
    xl_unet = ref_unet(XL_UNET)
    xl = diffusers.StableDiffusionXLControlNetXSPipeline(
        vae=cn.diffusers_vae(0),
        text_encoder=tiny_clip_text_model(0),
        text_encoder_2=tiny_clip_text_model(1, projection=True),
        tokenizer=tiny_clip_tokenizer(root / "vocab"),
        tokenizer_2=tiny_clip_tokenizer(root / "vocab_2"),
        unet=xl_unet,
        controlnet=ref_adapter(xl_unet, [2, 4]),
        scheduler=diffusers.EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            steps_offset=1,
        ),
        add_watermarker=False,
    )
    _randomized(xl.unet, 8)
    out = {}
    for name, pipe in (("sd", sd), ("xl", xl)):
        pipe.save_pretrained(root / name)
        ref = type(pipe).from_pretrained(root / name)
        ref.set_progress_bar_config(disable=True)
        out[name] = (ref, cn.load_difflux(root / name))
    return out


def _compare(ref: Any, ours: Any, cn: Any, seed: int = 0, *, latent: bool = False, **kw: Any) -> None:
    kw = {"prompt": PROMPT, "num_inference_steps": 3, **kw}
    kinds = (("latent", 1e-4), ("np", 1 / 255)) if latent else (("np", 1 / 255),)
    for output_type, tol in kinds:
        a = ref(**kw, generator=cn.gen(seed), output_type=output_type).images
        b = ours(**kw, generator=cn.gen(seed), output_type=output_type).images
        assert cn.max_diff(a, b) <= tol, (output_type, cn.max_diff(a, b))


def test_loads_as_xs_pipelines(xs_pairs: dict[str, tuple[Any, Any]], tmp_path: Path) -> None:
    from difflux_controlnet import (
        ControlNetXSAdapter,
        StableDiffusionControlNetXSPipeline,
        StableDiffusionXLControlNetXSPipeline,
        UNetControlNetXSModel,
    )

    sd, xl = xs_pairs["sd"][1], xs_pairs["xl"][1]
    assert type(sd) is StableDiffusionControlNetXSPipeline and type(xl) is StableDiffusionXLControlNetXSPipeline
    for ours, ref in (
        (sd, diffusers.StableDiffusionControlNetXSPipeline),
        (xl, diffusers.StableDiffusionXLControlNetXSPipeline),
    ):
        assert isinstance(ours.unet, UNetControlNetXSModel) and isinstance(ours.controlnet, ControlNetXSAdapter)
        assert ours.model_cpu_offload_seq == ref.model_cpu_offload_seq
        assert set(ours._optional_components) == set(ref._optional_components)
    xl.save_pretrained(tmp_path / "xl")
    index = json.loads((tmp_path / "xl" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNetControlNetXSModel"] and "image_encoder" not in index
    back = diffusers.StableDiffusionXLControlNetXSPipeline.from_pretrained(tmp_path / "xl")
    assert isinstance(back.unet, diffusers.UNetControlNetXSModel)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"controlnet_conditioning_scale": 0.5, "guidance_scale": 1.0},
        {"control_guidance_start": 0.3, "control_guidance_end": 0.7, "num_inference_steps": 4},
    ],
    ids=["cfg", "no-cfg-scale", "window"],
)
def test_sd_xs_parity(cn: Any, xs_pairs: dict[str, tuple[Any, Any]], options: dict[str, Any]) -> None:
    ref, ours = xs_pairs["sd"]
    _compare(ref, ours, cn, image=cn.image_input(1), latent=not options, **options)


@pytest.mark.parametrize(
    "options",
    [{}, {"control_guidance_end": 0.5, "num_inference_steps": 4, "negative_prompt": "blurry"}],
    ids=["cfg", "window-negative"],
)
def test_sdxl_xs_parity(cn: Any, xs_pairs: dict[str, tuple[Any, Any]], options: dict[str, Any]) -> None:
    ref, ours = xs_pairs["xl"]
    _compare(ref, ours, cn, image=cn.image_input(2), latent=not options, **options)


def test_xs_batches_and_generator_lists(cn: Any, xs_pairs: dict[str, tuple[Any, Any]]) -> None:
    ref, ours = xs_pairs["sd"]
    kw: dict[str, Any] = {
        "prompt": [PROMPT, "a dog"],
        "image": cn.image_input(3),
        "num_images_per_prompt": 2,
        "num_inference_steps": 2,
        "output_type": "np",
    }
    a = ref(**kw, generator=[cn.gen(i) for i in range(4)]).images
    b = ours(**kw, generator=[cn.gen(i) for i in range(4)]).images
    assert b.shape == (4, 32, 32, 3) and cn.max_diff(a, b) <= 1 / 255
    alone = ours(**{**kw, "prompt": "a dog", "num_images_per_prompt": 1}, generator=cn.gen(3)).images
    assert cn.max_diff(alone[0], b[3]) <= 1 / 255


@pytest.mark.parametrize(
    ("pair", "kw", "error", "match"),
    [
        ("sd", {"image": None}, ValueError, "needs image="),
        ("sd", {"image": "cat.png"}, TypeError, "image must be a PIL image"),
        ("sd", {"controlnet_conditioning_scale": [1.0]}, TypeError, "controlnet_conditioning_scale must be a finite"),
        ("sd", {"control_guidance_start": 0.8, "control_guidance_end": 0.2}, ValueError, "0 <= start < end <= 1"),
        ("sd", {"control_guidance_end": "all"}, ValueError, "must be numbers"),
        ("sd", {"prompt": ["a", "b"], "image": torch.rand(3, 3, 32, 32)}, ValueError, "3 condition images for 2"),
        ("xl", {"controlnet_conditioning_scale": float("inf")}, TypeError, "controlnet_conditioning_scale"),
        ("xl", {"control_guidance_start": -0.1}, ValueError, "0 <= start < end <= 1"),
    ],
)
def test_bad_input_fails_before_any_model_runs(
    cn: Any,
    xs_pairs: dict[str, tuple[Any, Any]],
    monkeypatch: pytest.MonkeyPatch,
    pair: str,
    kw: dict[str, Any],
    error: type[Exception],
    match: str,
) -> None:
    ours = xs_pairs[pair][1]
    kw = {"prompt": PROMPT, "image": cn.image_input(1), **kw}

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("a model ran")

    for name in ("unet", "text_encoder", "vae"):
        monkeypatch.setattr(getattr(ours, name), "forward", boom)
    with pytest.raises(error, match=match):
        ours(num_inference_steps=2, **kw)


def test_condition_embedding_reuse_follows_changes(cn: Any, xs_pairs: dict[str, tuple[Any, Any]]) -> None:
    """The fused UNet reuses the last condition embedding only for the same, unchanged tensor."""
    ref, ours = xs_pairs["sd"][0].unet, xs_pairs["sd"][1].unet
    kw = _inputs(cn, 32, False)
    cond = kw["controlnet_cond"]
    with torch.no_grad():
        first = ours(**kw).sample
        cond.mul_(0.5)  # in place: a new version of the same tensor
        second = ours(**kw).sample
        expected = ref(**kw).sample
        ours.forget_condition()
    assert cn.max_diff(second, expected) <= 1e-5 and cn.max_diff(first, second) > 1e-4
