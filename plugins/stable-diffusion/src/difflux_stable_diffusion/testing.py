"""Small helpers for tests of Stable Diffusion pipelines and the families built on them (ControlNet ...).

Inputs are deterministic and tiny; nothing is downloaded. A plugin's ``conftest.py`` imports these
instead of keeping its own copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["diffusers_sd_components", "gen", "image_input", "load_difflux", "mask_input", "max_diff"]

#: Default image side of the test inputs, in pixels (16x16 latents with a two-block VAE).
SIZE = 32


def load_difflux(folder: Path, **kwargs: Any) -> Any:
    """``DiffusionPipeline.from_pretrained(folder, **kwargs)`` with the progress bar off."""
    import difflux

    pipe = difflux.DiffusionPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gen(seed: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def image_input(seed: int = 0, size: int = SIZE) -> Any:
    """A ``size`` x ``size`` RGB ``PIL.Image`` of uniform random pixels (uint8), reproducible from ``seed``."""
    import PIL.Image

    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def mask_input(size: int = SIZE) -> Any:
    """A ``size`` x ``size`` grey ``PIL.Image`` mask: white (repaint) in the central square, black elsewhere."""
    import PIL.Image

    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    return PIL.Image.fromarray(mask)


def max_diff(a: Any, b: Any) -> float:
    """Largest absolute element difference of two tensors / arrays / PIL images of one shape, in float64.

    :raises AssertionError: when the shapes differ.
    """
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a, dtype=np.float64)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def diffusers_sd_components(folder: Path, scheduler: str = "DDIMScheduler", **unet: Any) -> dict[str, Any]:
    """Tiny random SD 1.x components built with Diffusers (the test-only oracle; imported here, in tests only).

    UNet: blocks ``DownBlock2D`` / ``CrossAttnDownBlock2D`` of 4 / 8 channels, a cross-attention mid
    block, 32-wide cross-attention, 16x16 latents (``unet`` overrides its config); a two-block VAE
    (32-pixel images); the tiny CLIP text encoder and tokenizer (written into ``folder / "vocab"``);
    ``scheduler`` by Diffusers class name with SD's ``scaled_linear`` betas. No safety checker.
    """
    import diffusers
    from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

    config: dict[str, Any] = {
        "block_out_channels": (4, 8),
        "layers_per_block": 1,
        "sample_size": SIZE // 2,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "norm_num_groups": 2,
        "attention_head_dim": 2,
        **unet,
    }
    torch.manual_seed(0)
    model = diffusers.UNet2DConditionModel(**config)
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
        sample_size=SIZE,
    )
    sched = getattr(diffusers, scheduler)(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return {
        "unet": model,
        "vae": vae,
        "text_encoder": tiny_clip_text_model(0),
        "tokenizer": tiny_clip_tokenizer(folder / "vocab"),
        "scheduler": sched,
        "safety_checker": None,
        "feature_extractor": None,
    }
