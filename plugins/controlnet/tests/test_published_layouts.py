"""Published ControlNet layouts load: Diffusers builds a tiny model with the published block types, embedding
types and options (channels scaled down), saves it, difflux loads the folder and gives the same residuals.

Layouts: ``lllyasviel/control_v11p_sd15_canny`` (SD 1.5), ``thibaud/controlnet-sd21-canny-diffusers``
(SD 2.1: linear projections, per-block head counts), ``diffusers/controlnet-canny-sdxl-1.0`` (SDXL:
text_time embedding, 3 blocks, deep transformers) and ``xinsir/controlnet-union-sdxl-1.0`` (Union, 6 modes;
the ProMax version has 8). Each keeps the published 4-stage conditioning embedding (condition images
8x the latent size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch

_SD15: dict[str, Any] = {
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "block_out_channels": (8, 16, 32, 32),
    "attention_head_dim": 2,
    "cross_attention_dim": 16,
    "norm_num_groups": 4,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
}
_SD21: dict[str, Any] = {**_SD15, "attention_head_dim": (1, 2, 4, 4), "use_linear_projection": True}
_SDXL: dict[str, Any] = {
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "block_out_channels": (8, 16, 32),
    "attention_head_dim": (1, 2, 4),
    "transformer_layers_per_block": (1, 2, 3),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 16,
    "cross_attention_dim": 32,
    "norm_num_groups": 4,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
}
_UNION: dict[str, Any] = {**_SDXL, "num_control_type": 6, "num_trans_channel": 8, "num_trans_head": 2,
                          "num_trans_layer": 1, "num_proj_channel": 8}  # fmt: skip
_PROMAX: dict[str, Any] = {**_UNION, "num_control_type": 8}

LAYOUTS = {"sd15": _SD15, "sd21": _SD21, "sdxl": _SDXL, "union": _UNION, "union-promax": _PROMAX}


def _inputs(config: dict[str, Any], batch: int = 2) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    kw: dict[str, Any] = {
        "sample": torch.randn(batch, 4, 8, 8, generator=g),
        "timestep": 421,
        "encoder_hidden_states": torch.randn(batch, 5, config["cross_attention_dim"], generator=g),
    }
    if config.get("addition_embed_type") == "text_time":
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 16, generator=g),
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * batch),
        }
    image = torch.rand(batch, 3, 64, 64, generator=g)
    if "num_control_type" in config:
        kind = torch.zeros(batch, config["num_control_type"])
        kind[:, [1, 3]] = 1.0
        kw.update(controlnet_cond=[image, image.flip(-1)], control_type=kind, control_type_idx=[1, 3],
                  conditioning_scale=[0.7, 1.1])  # fmt: skip
    else:
        kw["controlnet_cond"] = image
    return kw


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_published_layout_loads_and_matches(cn: Any, tmp_path: Path, layout: str) -> None:
    import difflux_controlnet

    config = LAYOUTS[layout]
    name = "ControlNetUnionModel" if "num_control_type" in config else "ControlNetModel"
    torch.manual_seed(0)
    ref = cn.randomize(getattr(diffusers, name)(**config), 1).eval()
    ref.save_pretrained(tmp_path / layout)
    ours = getattr(difflux_controlnet, name).from_pretrained(tmp_path / layout)
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    kw = _inputs(config)
    with torch.no_grad():
        a = ref(**kw, return_dict=False)
        b = ours(**kw, return_dict=False)
    assert len(a[0]) == len(b[0]) == 1 + 3 * (len(config["down_block_types"]) - 1) + 2
    for p, q in zip([*a[0], a[1]], [*b[0], b[1]], strict=True):
        assert p.shape == q.shape
        assert (p - q).abs().max().item() <= 1e-4 * max(1.0, p.abs().max().item())
    assert a[1].abs().max().item() > 1e-3
    # and what difflux saves loads back in Diffusers with the same weights
    ours.save_pretrained(tmp_path / "back")
    back = getattr(diffusers, name).from_pretrained(tmp_path / "back")
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ref.state_dict().items())


_PIPELINES = [
    "StableDiffusionControlNetInpaintPipeline",
    "StableDiffusionXLControlNetPipeline",
    "StableDiffusionXLControlNetImg2ImgPipeline",
    "StableDiffusionXLControlNetInpaintPipeline",
    "StableDiffusionXLControlNetUnionPipeline",
    "StableDiffusionXLControlNetUnionImg2ImgPipeline",
    "StableDiffusionXLControlNetUnionInpaintPipeline",
]
#: Diffusers arguments difflux does not take (IP-Adapter inputs, masked-region crop); see docs/controlnet.md
_NOT_TAKEN = {"ip_adapter_image", "ip_adapter_image_embeds", "padding_mask_crop", "kwargs"}


@pytest.mark.parametrize("name", _PIPELINES)
def test_call_arguments_and_defaults_are_diffusers(name: str) -> None:
    """Every ``__call__`` argument a Diffusers user passes exists with the same default (``callback`` /
    ``callback_steps`` come through Diffusers' ``**kwargs``); ``__init__`` takes the same components."""
    import inspect

    import difflux_controlnet

    theirs = getattr(diffusers, name)
    ours = getattr(difflux_controlnet, name)
    mine = inspect.signature(ours.__call__).parameters
    for pname, p in inspect.signature(theirs.__call__).parameters.items():
        if pname in ("self", *_NOT_TAKEN):
            continue
        assert pname in mine, f"{name}.__call__ lacks {pname}"
        default = p.default if p.default is not inspect.Parameter.empty else None
        ours_default = mine[pname].default
        if isinstance(default, list):
            default, ours_default = tuple(default), tuple(ours_default)
        assert ours_default == default, (pname, ours_default, default)
    init = set(inspect.signature(theirs.__init__).parameters) - {"self", "add_watermarker"}
    assert init == set(inspect.signature(ours.__init__).parameters) - {"self"}
