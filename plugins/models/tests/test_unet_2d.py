"""UNet2DModel: two-way parity with diffusers for DDPM / LDM / score-SDE style configs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from difflux.testing import ComponentConformance
from difflux_models import UNet2DModel
from diffusers import UNet2DModel as DUNet2D

BASE: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": 4,
}

CASES: dict[str, dict[str, Any]] = {
    "ddpm": {},
    "ldm_scale_shift": {"resnet_time_scale_shift": "scale_shift", "attention_head_dim": None, "flip_sin_to_cos": False},
    "fourier": {"time_embedding_type": "fourier", "center_input_sample": True},
    "class_embeds": {"num_class_embeds": 4, "attn_norm_num_groups": 2, "freq_shift": 1},
    "class_timestep": {"class_embed_type": "timestep"},
    "resnet_resampling": {
        "down_block_types": ("AttnDownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D"),
        "downsample_type": "resnet",
        "upsample_type": "resnet",
        "layers_per_block": 2,
    },
    "no_mid_attention": {"add_attention": False, "mid_block_scale_factor": 1.414, "time_embedding_dim": 24},
    "no_mid": {"mid_block_type": None},
    "learned_time": {"time_embedding_type": "learned", "num_train_timesteps": 100},
    # openai/diffusers-cd_imagenet64_* (consistency models), scaled down
    "consistency_models": {
        "block_out_channels": (8, 16, 16),
        "down_block_types": ("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
        "downsample_type": "resnet",
        "upsample_type": "resnet",
        "layers_per_block": 2,
        "num_class_embeds": 10,
        "resnet_time_scale_shift": "scale_shift",
    },
    # google/ncsnpp-* (score SDE VE, NCSN++), scaled down: skip blocks, FIR resampling, no norm groups
    "ncsnpp": {
        "block_out_channels": (32, 64, 64),
        "down_block_types": ("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"),
        "up_block_types": ("SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"),
        "time_embedding_type": "fourier",
        "norm_num_groups": None,
        "norm_eps": 1e-6,
        "attention_head_dim": None,
        "mid_block_scale_factor": 1.41421356237,
        "freq_shift": 1,
    },
    "ncsnpp_two_layers_scale_shift": {
        "block_out_channels": (32, 64),
        "down_block_types": ("AttnSkipDownBlock2D", "SkipDownBlock2D"),
        "up_block_types": ("SkipUpBlock2D", "AttnSkipUpBlock2D"),
        "time_embedding_type": "fourier",
        "norm_num_groups": None,
        "layers_per_block": 2,
        "attention_head_dim": 16,
        "resnet_time_scale_shift": "scale_shift",
    },
}


def make_inputs(config: dict[str, Any]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    inputs: dict[str, Any] = {"sample": torch.randn(2, 3, 8, 8, generator=g), "timestep": torch.tensor([3, 41])}
    if config.get("time_embedding_type") == "fourier":
        inputs["timestep"] = torch.tensor([0.5, 2.0])
    if config.get("num_class_embeds") or config.get("class_embed_type") == "timestep":
        inputs["class_labels"] = torch.tensor([1, 3])
    return inputs


@pytest.mark.parametrize("case", list(CASES))
def test_parity(parity: Any, case: str) -> None:
    config = {**BASE, **CASES[case]}
    parity(DUNet2D, UNet2DModel, config, lambda: make_inputs(config))


def test_scalar_timestep(parity: Any, kit: Any) -> None:
    result = parity(DUNet2D, UNet2DModel, BASE, lambda: make_inputs(BASE), reverse=False)
    x = make_inputs(BASE)["sample"]
    with torch.no_grad():
        kit.assert_close(result.model(x, 7).sample, result.reference(x, 7).sample)
        kit.assert_close(result.model(x, torch.tensor(7)).sample, result.reference(x, torch.tensor(7)).sample)
    with pytest.raises(ValueError, match="no class embedding"):
        result.model(x, 7, class_labels=torch.tensor([1, 2]))


class TestUNet2DConformance(ComponentConformance):
    component_class = UNet2DModel
    atol = 1e-5

    def make_component(self) -> UNet2DModel:
        torch.manual_seed(0)
        return UNet2DModel(**BASE)

    def make_inputs(self) -> dict[str, Any]:
        return {"sample": torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)), "timestep": 5}
