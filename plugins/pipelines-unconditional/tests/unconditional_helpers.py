"""Shared helpers for the unconditional pipeline tests: tiny seeded components and the Diffusers parity check.

``check_parity`` is the contract of issue 5 in one call: Diffusers builds a pipeline from tiny
random components and saves it; ``difflux.DiffusionPipeline.from_pretrained`` of that folder
picks the right class; the same seed gives the same output; and difflux's ``save_pretrained``
output loads in Diffusers and gives the same output again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch

#: fp32 tolerance on arrays and tensors; images (PIL) may differ by one level.
ATOL = 1e-4

Inputs = Callable[[], dict[str, Any]]


def tiny_unet_2d(**overrides: Any) -> Any:
    """A seeded random Diffusers UNet2DModel small enough for tests (3 x 8 x 8, with attention)."""
    torch.manual_seed(0)
    config: dict[str, Any] = {
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "sample_size": 8,
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": 4,
    }
    config.update(overrides)
    return diffusers.UNet2DModel(**config)


def as_array(images: Any) -> np.ndarray:
    """Pipeline images (PIL list, array or tensor) as one float64 array."""
    if isinstance(images, torch.Tensor):
        return images.detach().cpu().double().numpy()
    if isinstance(images, list):
        return np.stack([np.asarray(i, dtype=np.float64) for i in images])
    return np.asarray(images, dtype=np.float64)


def assert_same(actual: Any, expected: Any, atol: float = ATOL, what: str = "output") -> None:
    a, b = as_array(actual), as_array(expected)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert diff <= atol, f"{what}: max abs difference {diff:.3g} > {atol}"


def first_output(result: Any) -> Any:
    for name in ("images", "audios"):
        if hasattr(result, name):
            return getattr(result, name)
    return result[0]


def quiet(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_parity(reference: Any, make_inputs: Inputs, tmp_path: Path, atol: float = ATOL) -> Any:
    """Diffusers folder → difflux (same class name, same output) → saved by difflux → Diffusers (same output).

    ``make_inputs`` returns fresh keyword arguments (new generators) on every call. Returns the
    difflux pipeline.
    """
    from difflux import DiffusionPipeline

    reference.save_pretrained(tmp_path / "diffusers")
    # reloaded, so every model is in eval mode (DiT's label dropout is active in train mode)
    reference = quiet(type(reference).from_pretrained(tmp_path / "diffusers"))
    expected = first_output(reference(**make_inputs()))

    pipe = quiet(DiffusionPipeline.from_pretrained(tmp_path / "diffusers"))
    assert type(pipe).__name__ == type(reference).__name__
    assert_same(first_output(pipe(**make_inputs())), expected, atol, "difflux on the Diffusers folder")

    pipe.save_pretrained(tmp_path / "difflux")
    again = quiet(type(reference).from_pretrained(tmp_path / "difflux"))
    assert_same(first_output(again(**make_inputs())), expected, atol, "Diffusers on the difflux folder")
    return pipe


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
