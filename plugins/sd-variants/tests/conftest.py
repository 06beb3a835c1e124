"""Tiny Stable Diffusion components built with Diffusers (the test-only oracle) for the sd-variants tests.

Sizes follow Diffusers' fast tests: two UNet blocks of 4/8 channels, one layer each, a two-block VAE
(32-pixel images, 16x16 latents), the tiny CLIP from ``difflux_transformers.testing``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen as gen  # re-exported: tests reach them through the `sv` fixture
from difflux_stable_diffusion.testing import image_input as image_input
from difflux_stable_diffusion.testing import load_difflux as load_difflux
from difflux_stable_diffusion.testing import mask_input as mask_input
from difflux_stable_diffusion.testing import max_diff as max_diff
from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

SIZE = 32  # pixels; latents are 16x16 with the two-block VAE
PIXEL_TOL = 1 / 255
LATENT_TOL = 1e-4
PROMPT = "a photo of a cat on the red horse"

UNET: dict[str, Any] = {
    "block_out_channels": (4, 8),
    "layers_per_block": 1,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "norm_num_groups": 2,
    "attention_head_dim": 2,
}

SDXL_UNET: dict[str, Any] = {
    **UNET,
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
    "cross_attention_dim": 64,
}


def diffusers_unet(seed: int = 0, **overrides: Any) -> Any:
    import diffusers

    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(**{**UNET, **overrides})


def diffusers_vae(seed: int = 0, **overrides: Any) -> Any:
    import diffusers

    torch.manual_seed(seed)
    config: dict[str, Any] = {
        "block_out_channels": [4, 8],
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "latent_channels": 4,
        "norm_num_groups": 2,
        "sample_size": SIZE,
    }
    return diffusers.AutoencoderKL(**{**config, **overrides})


def scheduler(name: str = "DDIMScheduler", **config: Any) -> Any:
    import diffusers

    base = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    return getattr(diffusers, name)(**{**base, **config})


def sd_components(
    folder: Path, sched: str = "DDIMScheduler", vae: dict[str, Any] | None = None, **unet: Any
) -> dict[str, Any]:
    """The SD 1.x component set (no safety checker), built by Diffusers."""
    return {
        "unet": diffusers_unet(0, **unet),
        "vae": diffusers_vae(0, **(vae or {})),
        "text_encoder": tiny_clip_text_model(0),
        "tokenizer": tiny_clip_tokenizer(folder / "vocab"),
        "scheduler": scheduler(sched),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def sdxl_components(folder: Path, sched: str = "EulerDiscreteScheduler", **unet: Any) -> dict[str, Any]:
    """The SDXL component set, built by Diffusers."""
    import diffusers

    torch.manual_seed(0)
    return {
        "unet": diffusers.UNet2DConditionModel(**{**SDXL_UNET, **unet}),
        "vae": diffusers_vae(0),
        "text_encoder": tiny_clip_text_model(0),
        "text_encoder_2": tiny_clip_text_model(1, projection=True),
        "tokenizer": tiny_clip_tokenizer(folder / "vocab"),
        "tokenizer_2": tiny_clip_tokenizer(folder / "vocab_2"),
        "scheduler": scheduler(sched, timestep_spacing="leading", steps_offset=1),
    }


def diffusers_pipeline(name: str, components: dict[str, Any], **config: Any) -> Any:
    import diffusers

    pipe = getattr(diffusers, name)(**components, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def saved_pair(folder: Path, name: str, components: dict[str, Any], **config: Any) -> tuple[Any, Any]:
    """``(Diffusers pipeline, the difflux one loaded from the folder Diffusers saved)``."""
    ref = diffusers_pipeline(name, components, **config)
    ref.save_pretrained(folder / name)
    ours = load_difflux(folder / name)
    if type(ours).__name__ != name:
        raise AssertionError(f"{folder / name} loaded as {type(ours).__name__}, expected {name}")
    return ref, ours


@pytest.fixture(autouse=True)
def _quiet_difflux_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="difflux")


@pytest.fixture(scope="session")
def sv() -> Any:
    """These helpers, as a fixture (test modules cannot import conftest under --import-mode=importlib)."""
    return sys.modules[__name__]
