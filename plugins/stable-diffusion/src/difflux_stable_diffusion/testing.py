"""Small helpers for tests of Stable Diffusion pipelines and the families built on them (ControlNet ...).

Inputs are deterministic and tiny; nothing is downloaded. A plugin's ``conftest.py`` imports these
instead of keeping its own copies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["gen", "image_input", "load_difflux", "mask_input", "max_diff"]

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
