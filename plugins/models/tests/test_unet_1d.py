"""UNet1DModel: two-way parity with diffusers (Dance Diffusion, RL planner, value function), conformance."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffusers
import pytest
import torch
from difflux.testing import ComponentConformance
from difflux_models.unet_1d import UNet1DModel
from difflux_models.unet_1d_blocks import SelfAttention1d, get_down_block


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


DANCE: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 2,
    "out_channels": 2,
    "extra_in_channels": 16,
    "time_embedding_dim": 16,
    "block_out_channels": (32, 32, 64),
}

CASES: dict[str, tuple[dict[str, Any], Callable[[], dict[str, Any]]]] = {
    "dance_fourier": (DANCE, lambda: {"sample": _randn(2, 2, 64), "timestep": torch.tensor([0.3, 0.7])}),
    "dance_positional_4_blocks": (
        {
            "sample_size": 64,
            "in_channels": 2,
            "out_channels": 2,
            "extra_in_channels": 32,
            "time_embedding_type": "positional",
            "flip_sin_to_cos": False,
            "freq_shift": 1.0,
            "block_out_channels": (32, 32, 64, 64),
            "down_block_types": ("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D", "AttnDownBlock1D"),
            "up_block_types": ("AttnUpBlock1D", "AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"),
        },
        lambda: {"sample": _randn(1, 2, 64), "timestep": 5},
    ),
    "rl_planner": (
        {
            "block_out_channels": (16, 32, 64),
            "in_channels": 6,
            "out_channels": 6,
            "time_embedding_type": "positional",
            "use_timestep_embedding": True,
            "flip_sin_to_cos": False,
            "freq_shift": 1.0,
            "out_block_type": "OutConv1DBlock",
            "mid_block_type": "MidResTemporalBlock1D",
            "down_block_types": ("DownResnetBlock1D",) * 3,
            "up_block_types": ("UpResnetBlock1D",) * 2,
            "act_fn": "swish",
            "layers_per_block": 2,
        },
        lambda: {"sample": _randn(2, 6, 16), "timestep": torch.tensor([3, 10])},
    ),
    "rl_value_function": (
        {
            "in_channels": 6,
            "out_channels": 6,
            "down_block_types": ("DownResnetBlock1D",) * 3,
            "up_block_types": (),
            "out_block_type": "ValueFunction",
            "mid_block_type": "ValueFunctionMidBlock1D",
            "block_out_channels": (16, 32, 64),
            "downsample_each_block": True,
            "use_timestep_embedding": True,
            "freq_shift": 1.0,
            "flip_sin_to_cos": False,
            "time_embedding_type": "positional",
            "act_fn": "mish",
        },
        lambda: {"sample": _randn(2, 6, 32), "timestep": torch.tensor([7, 400])},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_diffusers(parity: Any, case: str) -> None:
    config, inputs = CASES[case]
    result = parity(diffusers.UNet1DModel, UNet1DModel, config, inputs)
    assert result.actual.abs().max() > 0


def test_attention_goes_through_difflux_dispatch(kit: Any) -> None:
    """Setting an unknown backend on the model must reach SelfAttention1d's dispatch call."""
    model = UNet1DModel(**DANCE).eval()
    attn = [m for m in model.modules() if isinstance(m, SelfAttention1d)]
    assert attn
    for m in attn:
        m.attention_backend = "no-such-backend"
    with pytest.raises(Exception, match="no-such-backend"):
        model(**CASES["dance_fourier"][1]())


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="NoSuchBlock"):
        get_down_block("NoSuchBlock", 1, 4, 4, 4, True)
    with pytest.raises(ValueError, match="time_embedding_type"):
        UNet1DModel(time_embedding_type="learned")
    with pytest.raises(ValueError, match="heads"):
        SelfAttention1d(16, 16 // 32)


class TestUNet1DConformance(ComponentConformance):
    component_class = UNet1DModel

    def make_component(self) -> UNet1DModel:
        torch.manual_seed(0)
        return UNet1DModel(**DANCE)

    def make_inputs(self) -> dict[str, Any]:
        return {"sample": _randn(1, 2, 64), "timestep": torch.tensor([0.5])}
