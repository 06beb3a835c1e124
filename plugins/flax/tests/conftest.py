"""Tiny Stable Diffusion folders (Diffusers layout, PyTorch safetensors) shared by the Flax tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SIZE = 32  # pixels: 16x16 latents with the two-block VAE

UNET: dict[str, Any] = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": 32,
    "norm_num_groups": 4,
    "attention_head_dim": 2,
}


def build_sd_folder(folder: Path, *, inpaint: bool = False, scheduler: str = "PNDMScheduler", **unet: Any) -> Path:
    """A random tiny SD pipeline built with Diffusers (the test-only oracle) and saved to ``folder``."""
    import diffusers
    import torch
    from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

    torch.manual_seed(0)
    config = {**UNET, **unet, **({"in_channels": 9} if inpaint else {})}
    components = {
        "unet": diffusers.UNet2DConditionModel(**config),
        "vae": diffusers.AutoencoderKL(
            block_out_channels=[8, 16],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
            norm_num_groups=4,
            sample_size=SIZE,
        ),
        "text_encoder": tiny_clip_text_model(0, num_hidden_layers=2),
        "tokenizer": tiny_clip_tokenizer(folder / "_vocab"),
        "scheduler": getattr(diffusers, scheduler).from_config(
            {
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "skip_prk_steps": True,
                "steps_offset": 1,
                "clip_sample": False,
                "set_alpha_to_one": False,
            }
        ),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }
    name = "StableDiffusionInpaintPipeline" if inpaint else "StableDiffusionPipeline"
    pipe = getattr(diffusers, name)(**components, requires_safety_checker=False)
    out = folder / ("inpaint" if inpaint else "sd")
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sd_folder(tmp_path_factory.mktemp("flax_sd"))


@pytest.fixture(scope="session")
def inpaint_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sd_folder(tmp_path_factory.mktemp("flax_inpaint"), inpaint=True)


@pytest.fixture(scope="session")
def torch_sd(sd_folder: Path) -> Any:
    """The same folder through difflux's PyTorch Stable Diffusion pipeline (the parity oracle)."""
    from difflux_stable_diffusion.testing import load_difflux

    return load_difflux(sd_folder)
