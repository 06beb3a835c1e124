"""Transformer2DModel (Diffusers' legacy class): continuous, discrete and patched inputs, and the
DiT / PixArt remapping on load, against diffusers; conformance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch
from difflux.testing import ComponentConformance
from difflux_models.transformers import DiTTransformer2DModel, PixArtTransformer2DModel, Transformer2DModel


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


CONTINUOUS: dict[str, Any] = {
    "in_channels": 16,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "norm_num_groups": 4,
}


def _continuous_inputs(cross: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"hidden_states": _randn(2, 16, 4, 4)}
    if cross:
        out["encoder_hidden_states"] = _randn(2, 5, 12, seed=1)
    return out


@pytest.mark.parametrize(
    "options",
    [
        {"cross_attention_dim": 12},
        {"cross_attention_dim": 12, "use_linear_projection": True, "num_layers": 2},
        {"cross_attention_dim": 12, "only_cross_attention": True, "upcast_attention": True},
        {"double_self_attention": True, "activation_fn": "gelu", "attention_bias": True},
    ],
    ids=["conv_proj", "linear_proj", "only_cross", "double_self"],
)
def test_continuous_parity(parity: Any, options: dict[str, Any]) -> None:
    cross = "cross_attention_dim" in options
    parity(
        diffusers.Transformer2DModel, Transformer2DModel, {**CONTINUOUS, **options}, lambda: _continuous_inputs(cross)
    )


def test_continuous_attention_mask(parity: Any) -> None:
    def inputs() -> dict[str, Any]:
        return {**_continuous_inputs(), "encoder_attention_mask": torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])}

    parity(diffusers.Transformer2DModel, Transformer2DModel, {**CONTINUOUS, "cross_attention_dim": 12}, inputs)


def test_discrete_parity(parity: Any) -> None:
    """VQ-Diffusion layout: token ids in, log-probabilities out; ``layer_norm`` + num_embeds_ada_norm means ada_norm."""
    config = {
        "num_vector_embeds": 9,
        "sample_size": 4,
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 12,
        "num_embeds_ada_norm": 20,
        "activation_fn": "geglu-approximate",
    }

    def inputs() -> dict[str, Any]:
        ids = torch.randint(0, 9, (2, 16), generator=torch.Generator().manual_seed(0))
        return {"hidden_states": ids, "encoder_hidden_states": _randn(2, 5, 12, seed=1), "timestep": torch.tensor(7)}

    result = parity(diffusers.Transformer2DModel, Transformer2DModel, config, inputs)
    assert result.actual.shape == (2, 8, 16)


DIT_LIKE: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 8,
    "sample_size": 8,
    "patch_size": 2,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "num_embeds_ada_norm": 10,
    "norm_type": "ada_norm_zero",
    "norm_elementwise_affine": False,
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
}
PIXART_LIKE: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 8,
    "sample_size": 8,
    "patch_size": 2,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "cross_attention_dim": 24,
    "caption_channels": 12,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "num_embeds_ada_norm": 1000,
    "use_additional_conditions": True,
}


def _dit_inputs() -> dict[str, Any]:
    return {
        "hidden_states": _randn(2, 4, 8, 8),
        "timestep": torch.tensor([3, 700]),
        "class_labels": torch.tensor([1, 9]),
    }


def _pixart_inputs() -> dict[str, Any]:
    return {
        "hidden_states": _randn(2, 4, 8, 8),
        "encoder_hidden_states": _randn(2, 5, 12, seed=1),
        "timestep": torch.tensor([3, 700]),
        "added_cond_kwargs": {
            "resolution": torch.tensor([[64.0, 64.0], [32.0, 48.0]]),
            "aspect_ratio": torch.tensor([[1.0], [0.75]]),
        },
        "encoder_attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
    }


@pytest.mark.parametrize(
    ("config", "inputs"),
    [(DIT_LIKE, _dit_inputs), (PIXART_LIKE, _pixart_inputs)],
    ids=["ada_norm_zero", "ada_norm_single"],
)
def test_patched_mode_built_directly(kit: Any, config: dict[str, Any], inputs: Any) -> None:
    """Built by hand (not loaded), the class runs the patched layouts itself, with diffusers' keys."""
    torch.manual_seed(0)
    reference_cls: Any = diffusers.Transformer2DModel
    reference = reference_cls(**config).eval()
    kit.perturb_(reference)
    model = Transformer2DModel(**config).eval()
    kit.copy_weights(reference, model)
    with torch.no_grad():
        kit.assert_close(kit.sample_of(model, inputs()), kit.sample_of(reference, inputs()))


@pytest.mark.parametrize(
    ("config", "inputs", "target", "diffusers_target"),
    [
        (DIT_LIKE, _dit_inputs, DiTTransformer2DModel, diffusers.DiTTransformer2DModel),
        (PIXART_LIKE, _pixart_inputs, PixArtTransformer2DModel, diffusers.PixArtTransformer2DModel),
    ],
    ids=["dit", "pixart"],
)
def test_legacy_folder_loads_as_diffusers_does(
    kit: Any, tmp_path: Path, config: dict[str, Any], inputs: Any, target: type[Any], diffusers_target: type[Any]
) -> None:
    """A ``Transformer2DModel`` folder with an adaLN norm loads as DiT / PixArt, like diffusers' remapping."""
    torch.manual_seed(0)
    reference_cls: Any = diffusers.Transformer2DModel
    reference = reference_cls(**config).eval()
    kit.perturb_(reference)
    reference.save_pretrained(tmp_path / "legacy")
    expected_model: Any = diffusers.Transformer2DModel.from_pretrained(tmp_path / "legacy")
    assert isinstance(expected_model, diffusers_target)

    model = Transformer2DModel.from_pretrained(tmp_path / "legacy")
    assert type(model) is target
    extras = {k for k in model.config if not k.startswith("_")} - target.init_parameter_names()
    assert extras, "the legacy config carries keys the target class does not take"
    assert extras <= target._quiet_config_keys({"_class_name": "Transformer2DModel"})  # kept, not warned about
    with torch.no_grad():
        expected = kit.sample_of(expected_model.eval(), inputs())
        kit.assert_close(kit.sample_of(model, inputs()), expected)

    model.save_pretrained(tmp_path / "ours")
    back: Any
    back, info = diffusers_target.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        kit.assert_close(kit.sample_of(back.eval(), inputs()), expected)


def test_input_kind_must_be_unambiguous() -> None:
    with pytest.raises(ValueError, match="exactly one input kind"):
        Transformer2DModel(in_channels=4, num_vector_embeds=9, sample_size=4)
    with pytest.raises(ValueError, match="exactly one input kind"):
        Transformer2DModel()
    with pytest.raises(ValueError, match="ada_norm_zero"):
        Transformer2DModel(in_channels=4, patch_size=2, sample_size=8, norm_type="layer_norm")


class TestTransformer2DConformance(ComponentConformance):
    component_class = Transformer2DModel

    def make_component(self) -> Transformer2DModel:
        torch.manual_seed(0)
        return Transformer2DModel(**CONTINUOUS, cross_attention_dim=12, use_linear_projection=True)

    def make_inputs(self) -> dict[str, Any]:
        return _continuous_inputs()
