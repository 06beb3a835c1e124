"""PixArtTransformer2DModel: two-way parity with diffusers (captions, masks, size conditioning), conformance."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest
import torch
from difflux.testing import ComponentConformance
from difflux_models.transformers import PixArtTransformer2DModel

# inner dim 24: divisible by 3, as the resolution / aspect-ratio embedding needs
TINY: dict[str, Any] = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "cross_attention_dim": 24,
    "caption_channels": 12,
}


def _inputs(*, sizes: bool = False, mask: bool = False, size: int = 8) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {
        "hidden_states": torch.randn(2, 4, size, size, generator=g),
        "encoder_hidden_states": torch.randn(2, 5, 12, generator=g),
        "timestep": torch.tensor([3, 700]),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }
    if sizes:
        out["added_cond_kwargs"] = {
            "resolution": torch.tensor([[64.0, 64.0], [32.0, 48.0]]),
            "aspect_ratio": torch.tensor([[1.0], [0.75]]),
        }
    if mask:
        out["encoder_attention_mask"] = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    return out


@pytest.mark.parametrize(
    ("options", "input_options"),
    [
        ({}, {}),
        ({"use_additional_conditions": True}, {"sizes": True}),
        ({}, {"mask": True}),
        ({"interpolation_scale": 2, "norm_elementwise_affine": True, "attention_bias": False}, {}),
        ({"use_additional_conditions": True, "sample_size": 128, "num_layers": 1}, {"sizes": True, "mask": True}),
    ],
    ids=["default", "size_conditioning", "caption_mask", "options", "alpha_1024_defaults"],
)
def test_parity_with_diffusers(parity: Any, options: dict[str, Any], input_options: dict[str, Any]) -> None:
    config = {**TINY, **options}
    if config["sample_size"] == 128:
        config.pop("use_additional_conditions")  # the default turns them on at sample_size 128
    result = parity(
        diffusers.PixArtTransformer2DModel, PixArtTransformer2DModel, config, lambda: _inputs(**input_options)
    )
    assert result.actual.shape == (2, 8, 8, 8)


def test_without_caption_projection(parity: Any) -> None:
    config = {**TINY, "caption_channels": None}

    def inputs() -> dict[str, Any]:
        out = _inputs()
        out["encoder_hidden_states"] = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(3))
        return out

    parity(diffusers.PixArtTransformer2DModel, PixArtTransformer2DModel, config, inputs)


def test_non_square_latent(parity: Any) -> None:
    def inputs() -> dict[str, Any]:
        out = _inputs()
        out["hidden_states"] = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(4))
        return out

    parity(diffusers.PixArtTransformer2DModel, PixArtTransformer2DModel, TINY, inputs, reverse=False)


def test_size_conditioning_is_required_when_on() -> None:
    model = PixArtTransformer2DModel(**TINY, use_additional_conditions=True).eval()
    inputs = _inputs()
    inputs["added_cond_kwargs"] = None
    with pytest.raises(ValueError, match="added_cond_kwargs"):
        model(**inputs)


class TestPixArtConformance(ComponentConformance):
    component_class = PixArtTransformer2DModel

    def make_component(self) -> PixArtTransformer2DModel:
        torch.manual_seed(0)
        return PixArtTransformer2DModel(**TINY)

    def make_inputs(self) -> dict[str, Any]:
        return _inputs(mask=True)
