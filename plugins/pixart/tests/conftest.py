"""Tiny PixArt pipelines built with Diffusers (the test-only oracle), saved, and loaded by difflux.

Three layouts, scaled down from the published ones (same classes, block and norm types):

* ``alpha``: ``PixArtTransformer2DModel`` at ``sample_size`` 32 (the 256 px bucket table);
* ``alpha_1024``: Diffusers' legacy ``Transformer2DModel`` with ``norm_type="ada_norm_single"`` at
  ``sample_size`` 128, as the published PixArt-XL-2-1024-MS folder names it (size micro-conditions on);
* ``sigma``: ``Transformer2DModel`` with ``interpolation_scale`` 2 and no micro-conditions, as
  PixArt-Sigma-XL-2 folders are.

The VAE has four blocks (8x downscaling, as the real one); the T5 encoder is two layers, 32 wide.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen as gen
from difflux_stable_diffusion.testing import load_difflux as load_difflux
from difflux_stable_diffusion.testing import max_diff as max_diff
from difflux_transformers.testing import tiny_t5_encoder, tiny_t5_tokenizer

#: the transformer at the published layout, scaled down (inner width 24 is divisible by 3 for size conditioning)
TRANSFORMER: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "cross_attention_dim": 24,
    "caption_channels": 32,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "num_embeds_ada_norm": 1000,
}
LAYOUTS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "alpha": ("PixArtAlphaPipeline", "PixArtTransformer2DModel", {"sample_size": 32}),
    "alpha_1024": ("PixArtAlphaPipeline", "Transformer2DModel", {"sample_size": 128, "num_layers": 1}),
    "sigma": (
        "PixArtSigmaPipeline",
        "Transformer2DModel",
        {"sample_size": 32, "interpolation_scale": 2, "use_additional_conditions": False},
    ),
}


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.05) -> Any:
    """Seeded random values for every parameter (a fresh PixArt's output projection is zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def diffusers_vae(seed: int = 0) -> Any:
    import diffusers

    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=2,
        layers_per_block=1,
    ).eval()


def diffusers_pixart(layout: str, folder: Path, scheduler: str = "DPMSolverMultistepScheduler") -> Any:
    """A Diffusers PixArt pipeline of ``layout`` (see the module doc), random weights, progress bar off."""
    import diffusers

    pipeline, transformer_class, options = LAYOUTS[layout]
    config = {**TRANSFORMER, **options}
    if transformer_class == "PixArtTransformer2DModel":
        config.pop("norm_type")
    transformer = randomize(getattr(diffusers, transformer_class)(**config), 1).eval()
    pipe = getattr(diffusers, pipeline)(
        tokenizer=tiny_t5_tokenizer(folder / "_tokenizer"),
        text_encoder=tiny_t5_encoder(2),
        vae=diffusers_vae(3),
        transformer=transformer,
        scheduler=getattr(diffusers, scheduler)(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def _quiet_difflux_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="difflux")


@pytest.fixture
def px() -> Any:
    """These helpers, as a fixture (test modules cannot import conftest under --import-mode=importlib)."""
    import sys

    return sys.modules[__name__]


@pytest.fixture(scope="session")
def pixart_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any, Path]]:
    """``{layout: (diffusers pipeline, difflux pipeline loaded from its folder, folder)}``."""
    root = tmp_path_factory.mktemp("pixart")
    out = {}
    for layout in LAYOUTS:
        ref = diffusers_pixart(layout, root)
        ref.save_pretrained(root / layout)
        out[layout] = (ref, load_difflux(root / layout), root / layout)
    return out
