"""Tiny Stable Diffusion components built with Diffusers (the test-only oracle) and saved for difflux."""

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

SIZE = 32  # pixels; latents are 16x16 with the two-block VAE


def diffusers_unet(seed: int = 0, **overrides: Any) -> Any:
    import diffusers

    config: dict[str, Any] = {
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


def diffusers_sd_components(tmp_path: Path, scheduler: str = "DDIMScheduler", **unet: Any) -> dict[str, Any]:
    import diffusers

    sched_cls = getattr(diffusers, scheduler)
    return {
        "unet": diffusers_unet(0, **unet),
        "vae": diffusers_vae(0),
        "text_encoder": tiny_clip_text_model(0),
        "tokenizer": tiny_clip_tokenizer(tmp_path / "vocab"),
        "scheduler": sched_cls(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def diffusers_pipeline(name: str, components: dict[str, Any], **config: Any) -> Any:
    import diffusers

    pipe = getattr(diffusers, name)(**components, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe




@pytest.fixture(autouse=True)
def _quiet_difflux_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="difflux")


@pytest.fixture(scope="session")
def sd() -> Any:
    """These helpers, as a fixture (test modules cannot import conftest under --import-mode=importlib)."""
    import sys

    return sys.modules[__name__]


def diffusers_sdxl_components(tmp_path: Path, scheduler: str = "EulerDiscreteScheduler", **unet: Any) -> dict[str, Any]:
    import diffusers

    unet_config: dict[str, Any] = {
        "block_out_channels": (4, 8),
        "layers_per_block": 1,
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
    unet_config.update(unet)
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(**unet_config)
    sched = getattr(diffusers, scheduler)(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    return {
        "unet": model,
        "vae": diffusers_vae(0),
        "text_encoder": tiny_clip_text_model(0),
        "text_encoder_2": tiny_clip_text_model(1, projection=True),
        "tokenizer": tiny_clip_tokenizer(tmp_path / "vocab"),
        "tokenizer_2": tiny_clip_tokenizer(tmp_path / "vocab_2"),
        "scheduler": sched,
        "image_encoder": None,
        "feature_extractor": None,
    }


# -- session-scoped pipelines (build once; tests make new pipelines from their components) -------------


@pytest.fixture(scope="session")
def sd_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """``(Diffusers StableDiffusionPipeline, the difflux one loaded from its saved folder)``, DDIM."""
    folder = tmp_path_factory.mktemp("sd-pair")
    ref = diffusers_pipeline("StableDiffusionPipeline", diffusers_sd_components(folder), requires_safety_checker=False)
    ref.save_pretrained(folder / "sd")
    return ref, load_difflux(folder / "sd")


@pytest.fixture(scope="session")
def sdxl_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """``(Diffusers StableDiffusionXLPipeline, the difflux one loaded from its saved folder)``, Euler."""
    folder = tmp_path_factory.mktemp("sdxl-pair")
    ref = diffusers_pipeline("StableDiffusionXLPipeline", diffusers_sdxl_components(folder))
    ref.save_pretrained(folder / "sdxl")
    return ref, load_difflux(folder / "sdxl")


def unet_like(unet: Any, **changes: Any) -> Any:
    """A seeded difflux UNet with ``unet``'s config and ``changes`` (e.g. ``in_channels=9``)."""
    from difflux_models import UNet2DConditionModel

    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    config.update(changes)
    torch.manual_seed(0)
    return UNet2DConditionModel(**config)
