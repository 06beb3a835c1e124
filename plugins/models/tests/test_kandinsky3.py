"""Kandinsky3UNet: two-way parity with diffusers at the published layout (four levels, first without
attention) scaled down, and at fewer levels; masks; conformance."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest
import torch
from difflux.testing import ComponentConformance
from difflux_models import Kandinsky3UNet

TINY: dict[str, Any] = {
    "in_channels": 4,
    "time_embedding_dim": 16,
    "groups": 4,
    "attention_head_dim": 4,
    "layers_per_block": 2,
    "block_out_channels": (16, 32, 32),
    "cross_attention_dim": 12,
    "encoder_hid_dim": 10,
}

CASES: dict[str, dict[str, Any]] = {
    "three_levels": {},
    "published_four_levels": {"layers_per_block": 3, "block_out_channels": (16, 16, 32, 32)},
    "two_levels": {"block_out_channels": (16, 32)},
}


def k3_inputs(batch: int = 2, mask: list[list[int]] | None = None) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(batch, 4, 8, 8, generator=g),
        "timestep": torch.tensor([3, 500][:batch]),
        "encoder_hidden_states": torch.randn(batch, 5, 10, generator=g),
        "encoder_attention_mask": torch.tensor(mask or [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]][:batch]),
    }


@pytest.mark.parametrize("case", list(CASES))
def test_parity(parity: Any, case: str) -> None:
    parity(diffusers.Kandinsky3UNet, Kandinsky3UNet, {**TINY, **CASES[case]}, k3_inputs)


def test_mask_optional_and_errors(parity: Any, kit: Any) -> None:
    """Diffusers needs a mask; here ``None`` means all tokens (the same as a mask of ones)."""
    ones = [[1] * 5, [1] * 5]
    result = parity(diffusers.Kandinsky3UNet, Kandinsky3UNet, TINY, lambda: k3_inputs(mask=ones), reverse=False)
    inputs = k3_inputs()
    inputs["encoder_attention_mask"] = None
    with torch.no_grad():
        kit.assert_close(result.model(**inputs).sample, result.expected)
        plain = result.model(**k3_inputs(), return_dict=False)
    assert isinstance(plain, tuple) and plain[0].shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        result.model(k3_inputs()["sample"], 3)
    with pytest.raises(ValueError, match="levels"):
        Kandinsky3UNet(**{**TINY, "block_out_channels": (16,) * 5})


class TestKandinsky3Conformance(ComponentConformance):
    component_class = Kandinsky3UNet
    atol = 1e-5

    def make_component(self) -> Kandinsky3UNet:
        torch.manual_seed(0)
        model = Kandinsky3UNet(**TINY)
        with torch.no_grad():  # the conditional norms start at zero: make them matter
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return model

    def make_inputs(self) -> dict[str, Any]:
        return k3_inputs(batch=1)
