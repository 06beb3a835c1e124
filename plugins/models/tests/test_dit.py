"""DiTTransformer2DModel: two-way parity with diffusers, attention processors, conformance."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest
import torch
from difflux.testing import ComponentConformance
from difflux_models.layers import AttnProcessor
from difflux_models.transformers import DiTTransformer2DModel

TINY: dict[str, Any] = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "num_embeds_ada_norm": 10,
}


def _inputs(batch: int = 2, size: int = 8) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(batch, 4, size, size, generator=g),
        "timestep": torch.tensor([3, 700][:batch]),
        "class_labels": torch.tensor([1, 9][:batch]),
    }


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"out_channels": 8},  # learn_sigma: noise and variance
        {"activation_fn": "gelu", "attention_bias": False, "norm_eps": 1e-6, "upcast_attention": True},
        {"patch_size": 4, "num_layers": 1, "norm_elementwise_affine": True},
    ],
    ids=["default", "learn_sigma", "options", "patch4"],
)
def test_parity_with_diffusers(parity: Any, options: dict[str, Any]) -> None:
    result = parity(diffusers.DiTTransformer2DModel, DiTTransformer2DModel, {**TINY, **options}, _inputs)
    assert result.actual.shape == (2, options.get("out_channels", 4), 8, 8)


def test_non_default_resolution(parity: Any) -> None:
    """A latent larger than sample_size recomputes the sin-cos position embedding, as diffusers does."""
    parity(diffusers.DiTTransformer2DModel, DiTTransformer2DModel, TINY, lambda: _inputs(size=12), reverse=False)


def test_class_labels_matter(kit: Any) -> None:
    torch.manual_seed(0)
    model = DiTTransformer2DModel(**TINY).eval()
    kit.perturb_(model)
    a = _inputs()
    b = {**_inputs(), "class_labels": torch.tensor([2, 3])}
    with torch.no_grad():
        assert not torch.allclose(model(**a).sample, model(**b).sample)


def test_processors_and_fused_projections(kit: Any) -> None:
    torch.manual_seed(0)
    model = DiTTransformer2DModel(**TINY).eval()
    kit.perturb_(model)
    with torch.no_grad():
        expected = model(**_inputs()).sample
        assert len(model.attn_processors) == TINY["num_layers"]
        model.set_attn_processor(AttnProcessor())
        model.fuse_qkv_projections()
        kit.assert_close(model(**_inputs()).sample, expected, 1e-5)
        model.unfuse_qkv_projections()
        kit.assert_close(model(**_inputs()).sample, expected, 1e-5)


def test_wrong_norm_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="ada_norm_zero"):
        DiTTransformer2DModel(**{**TINY, "norm_type": "ada_norm_single"})


class TestDiTConformance(ComponentConformance):
    component_class = DiTTransformer2DModel

    def make_component(self) -> DiTTransformer2DModel:
        torch.manual_seed(0)
        return DiTTransformer2DModel(**TINY, out_channels=8)

    def make_inputs(self) -> dict[str, Any]:
        return _inputs()
