"""The Diffusers side of the sd-guidance tests and bench: tiny random SD 1.x components.

Test-only (Diffusers is the test oracle and is never imported by shipped code). ``conftest.py`` puts
this folder on ``sys.path``; ``bench/bench_sd_guidance.py`` does the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from difflux_stable_diffusion.testing import SIZE

__all__ = ["diffusers_sd_components"]


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
