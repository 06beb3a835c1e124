"""Tiny SD, SDXL and DiT pipelines built from difflux classes, and dynamo bookkeeping."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch


def tiny_unet(**overrides: Any) -> Any:
    from difflux_models import UNet2DConditionModel

    config: dict[str, Any] = {
        "block_out_channels": (4, 8),
        "layers_per_block": 1,
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "norm_num_groups": 2,
        "attention_head_dim": 2,
    }
    config.update(overrides)
    torch.manual_seed(0)
    return UNet2DConditionModel(**config).eval()


def tiny_vae() -> Any:
    from difflux_models import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    ).eval()


def tiny_sd(tmp_path: Path) -> Any:
    from difflux_schedulers import DDIMScheduler
    from difflux_stable_diffusion import StableDiffusionPipeline
    from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_clip_text_model(0),
        tokenizer=tiny_clip_tokenizer(tmp_path / "vocab"),
        unet=tiny_unet(),
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl(tmp_path: Path) -> Any:
    from difflux_schedulers import EulerDiscreteScheduler
    from difflux_stable_diffusion import StableDiffusionXLPipeline
    from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

    unet = tiny_unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_clip_text_model(0),
        text_encoder_2=tiny_clip_text_model(1, projection=True),
        tokenizer=tiny_clip_tokenizer(tmp_path / "vocab"),
        tokenizer_2=tiny_clip_tokenizer(tmp_path / "vocab_2"),
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            steps_offset=1,
        ),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_dit() -> Any:
    from difflux_models import DiTTransformer2DModel
    from difflux_pipelines_unconditional import DiTPipeline
    from difflux_schedulers import DDIMScheduler

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        out_channels=8,  # learned variance, as the published DiT
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_embeds_ada_norm=10,
    ).eval()
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def graphs() -> int:
    """Graphs dynamo has compiled since the last reset (each recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.fixture(autouse=True)
def _fresh_dynamo(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with dynamo's caches and counters empty (compiled code is per process),
    and sees a process without allocator tuning (what cpu_allocator checks)."""
    from torch._dynamo.utils import counters

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    caplog.set_level(logging.INFO, logger="difflux")
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture
def kit() -> Any:
    """These helpers, as a fixture (test modules cannot import conftest under --import-mode=importlib)."""
    import sys

    return sys.modules[__name__]
