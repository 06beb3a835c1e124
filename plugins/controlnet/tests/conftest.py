"""Tiny ControlNet fixtures built with Diffusers (the test-only oracle) and saved for difflux.

Sizes follow Diffusers' fast tests: two down blocks of 4/8 channels, 32-pixel images, 16x16 latents
(the tiny VAE downsamples by 2, so the conditioning embedding has one stride-2 stage).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen as gen  # re-exported: tests reach them through the conftest fixture
from difflux_stable_diffusion.testing import image_input as image_input
from difflux_stable_diffusion.testing import load_difflux as load_difflux
from difflux_stable_diffusion.testing import mask_input as mask_input
from difflux_stable_diffusion.testing import max_diff as max_diff
from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

SIZE = 32  # pixels
LATENT = 16

#: SD 1.x / 2.x layout, scaled down (Diffusers' fast-test ControlNet)
SD_CONFIG: dict[str, Any] = {
    "block_out_channels": (4, 8),
    "layers_per_block": 2,
    "in_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "cross_attention_dim": 32,
    "conditioning_embedding_out_channels": (16, 32),
    "norm_num_groups": 2,
    "attention_head_dim": 2,
}
#: SDXL layout, scaled down: text_time additional embedding, linear projections, per-block transformer depth
SDXL_CONFIG: dict[str, Any] = {
    "block_out_channels": (4, 8),
    "layers_per_block": 2,
    "in_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
    "cross_attention_dim": 64,
    "conditioning_embedding_out_channels": (16, 32),
    "norm_num_groups": 2,
}


def randomize(model: torch.nn.Module, seed: int) -> Any:
    """Give every parameter seeded random values (a fresh ControlNet's zero convolutions output zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def diffusers_controlnet(seed: int = 0, config: dict[str, Any] | None = None, **overrides: Any) -> Any:
    """A Diffusers ``ControlNetModel`` with random (non-zero) weights."""
    import diffusers

    torch.manual_seed(seed)
    model = diffusers.ControlNetModel(**{**(config or SD_CONFIG), **overrides})
    return randomize(model, seed + 100).eval()


def diffusers_unet(seed: int = 0, **overrides: Any) -> Any:
    import diffusers

    config: dict[str, Any] = {
        "block_out_channels": (4, 8),
        "layers_per_block": 2,
        "sample_size": LATENT,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "norm_num_groups": 2,
        "attention_head_dim": 2,
    }
    config.update(overrides)
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(**config)


def diffusers_vae(seed: int = 0) -> Any:
    import diffusers

    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
        sample_size=SIZE,
    )


def diffusers_sd_components(tmp_path: Path, controlnet: Any, scheduler: str = "DDIMScheduler") -> dict[str, Any]:
    import diffusers

    return {
        "unet": diffusers_unet(0),
        "controlnet": controlnet,
        "vae": diffusers_vae(0),
        "text_encoder": tiny_clip_text_model(0),
        "tokenizer": tiny_clip_tokenizer(tmp_path / "vocab"),
        "scheduler": getattr(diffusers, scheduler)(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }




def diffusers_sdxl_components(tmp_path: Path, controlnet: Any, **unet: Any) -> dict[str, Any]:
    """Tiny SDXL pipeline components (Diffusers' fast-test sizes) around ``controlnet``; Euler, leading spacing."""
    import diffusers

    config: dict[str, Any] = {
        **{k: v for k, v in SDXL_CONFIG.items() if k != "conditioning_embedding_out_channels"},
        "sample_size": LATENT,
        "out_channels": 4,
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        **unet,
    }
    torch.manual_seed(0)
    return {
        "unet": diffusers.UNet2DConditionModel(**config),
        "controlnet": controlnet,
        "vae": diffusers_vae(0),
        "text_encoder": tiny_clip_text_model(0),
        "text_encoder_2": tiny_clip_text_model(1, projection=True),
        "tokenizer": tiny_clip_tokenizer(tmp_path / "vocab"),
        "tokenizer_2": tiny_clip_tokenizer(tmp_path / "vocab_2"),
        "scheduler": diffusers.EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
            steps_offset=1,
        ),
        "image_encoder": None,
        "feature_extractor": None,
    }


@pytest.fixture(autouse=True)
def _quiet_difflux_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="difflux")


@pytest.fixture(scope="session")
def cn() -> Any:
    """These helpers, as a fixture (test modules cannot import conftest under --import-mode=importlib)."""
    import sys

    return sys.modules[__name__]


@pytest.fixture(scope="session")
def saved_controlnets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    """Diffusers-built random ControlNets (SD and SDXL layouts), saved: ``{layout: (model, folder)}``."""
    root = tmp_path_factory.mktemp("controlnets")
    out = {}
    for name, config in (("sd", SD_CONFIG), ("sdxl", SDXL_CONFIG)):
        model = diffusers_controlnet(0, config)
        model.save_pretrained(root / name)
        out[name] = (model, root / name)
    return out


@pytest.fixture(scope="session")
def sd_controlnet_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    """``{"single" | "multi": (Diffusers pipeline, the difflux one loaded from its saved folder)}``."""
    import diffusers

    folder = tmp_path_factory.mktemp("sd-controlnet")
    nets = [diffusers_controlnet(0), diffusers_controlnet(1)]
    out = {}
    for name, controlnet in (("single", nets[0]), ("multi", nets)):
        components = diffusers_sd_components(folder, controlnet)
        ref = diffusers.StableDiffusionControlNetPipeline(**components, requires_safety_checker=False)
        ref.set_progress_bar_config(disable=True)
        ref.save_pretrained(folder / name)
        out[name] = (ref, load_difflux(folder / name))
    return out
