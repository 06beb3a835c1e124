"""PixArt's resolution buckets and the resize back to the size asked for.

PixArt-alpha and -sigma were trained on a fixed set of (height, width) buckets per base size
(PixArt-alpha paper, Chen et al. 2023, sec. "multi-aspect augmentation"). With
``use_resolution_binning`` a pipeline generates at the bucket nearest the requested aspect ratio
and resizes and centre-crops the decoded images to the requested size.

Each table maps the ratio ``height / width`` rounded to two decimals (as a string, e.g. ``"0.57"``)
to the bucket's ``(height, width)`` in pixels (floats, as the published tables write them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "ASPECT_RATIO_256_BIN",
    "ASPECT_RATIO_512_BIN",
    "ASPECT_RATIO_1024_BIN",
    "ASPECT_RATIO_2048_BIN",
    "bins_for",
    "classify_height_width_bin",
    "resize_and_crop_tensor",
]

# Buckets as (height, width) in units of base/16 pixels (64 px at 1024), narrowest to tallest.
_BASE_UNITS: tuple[tuple[int, int], ...] = (
    (8, 32), (8, 29), (9, 28), (9, 27), (9, 26), (10, 25), (10, 24), (11, 23), (11, 22), (11, 21),
    (12, 21), (12, 20), (13, 19), (13, 18), (14, 18), (14, 17), (15, 17), (15, 16), (16, 16),
    (16, 15), (17, 15), (17, 14), (18, 14), (18, 13), (19, 13), (20, 12), (21, 12), (22, 11),
    (23, 11), (24, 10), (25, 10), (27, 9), (32, 8),
)  # fmt: skip
# PixArt-sigma's 2048 buckets add the very wide and very tall ones.
_SIGMA_2048_UNITS: tuple[tuple[int, int], ...] = (
    (8, 32), (8, 31), (8, 30), (8, 29), (9, 28), (9, 27), (9, 26), (10, 25), (10, 24), (11, 23),
    (11, 22), (11, 21), (12, 21), (12, 20), (13, 19), (13, 18), (14, 18), (14, 17), (15, 17),
    (15, 16), (16, 16), (16, 15), (17, 15), (17, 14), (18, 14), (18, 13), (19, 13), (20, 12),
    (21, 12), (22, 11), (23, 11), (24, 10), (25, 10), (26, 9), (27, 9), (28, 9), (29, 8), (30, 8),
    (31, 8), (32, 8),
)  # fmt: skip


def _table(units: tuple[tuple[int, int], ...], unit: int) -> dict[str, tuple[float, float]]:
    return {str(round(h / w, 2)): (float(h * unit), float(w * unit)) for h, w in units}


ASPECT_RATIO_256_BIN = _table(_BASE_UNITS, 16)
ASPECT_RATIO_512_BIN = _table(_BASE_UNITS, 32)
ASPECT_RATIO_1024_BIN = _table(_BASE_UNITS, 64)
ASPECT_RATIO_2048_BIN = _table(_SIGMA_2048_UNITS, 128)

#: the bucket table of a transformer by its ``sample_size`` (latent side at the base resolution)
_BY_SAMPLE_SIZE = {32: ASPECT_RATIO_256_BIN, 64: ASPECT_RATIO_512_BIN, 128: ASPECT_RATIO_1024_BIN}


def bins_for(sample_size: int, pipeline: str, *, sigma: bool = False) -> dict[str, tuple[float, float]]:
    """The bucket table of a transformer with ``sample_size`` (32: 256 px, 64: 512 px, 128: 1024 px,
    and for PixArt-sigma 256: 2048 px).

    :raises ValueError: for any other ``sample_size`` (pass ``use_resolution_binning=False``).
    """
    tables = {**_BY_SAMPLE_SIZE, 256: ASPECT_RATIO_2048_BIN} if sigma else _BY_SAMPLE_SIZE
    table = tables.get(int(sample_size))
    if table is None:
        sizes = ", ".join(str(s) for s in tables)
        raise ValueError(
            f"{pipeline}: use_resolution_binning has bucket tables for transformers with sample_size {sizes}; "
            f"this one has sample_size={sample_size}. Pass use_resolution_binning=False"
        )
    return table


def classify_height_width_bin(height: int, width: int, ratios: dict[str, tuple[float, float]]) -> tuple[int, int]:
    """The bucket ``(height, width)`` in pixels whose ratio is nearest ``height / width`` (first one on a tie)."""
    wanted = float(height / width)
    nearest = min(ratios, key=lambda ratio: abs(float(ratio) - wanted))
    h, w = ratios[nearest]
    return int(h), int(w)


def resize_and_crop_tensor(samples: torch.Tensor, new_width: int, new_height: int) -> torch.Tensor:
    """Scale ``samples`` ``(batch, channels, h, w)`` (bilinear, no corner alignment) until they cover
    ``new_height`` x ``new_width``, then crop the centre to exactly that size. Same-size input passes."""
    height, width = samples.shape[2], samples.shape[3]
    if (height, width) == (new_height, new_width):
        return samples
    scale = max(new_height / height, new_width / width)
    scaled_h, scaled_w = int(height * scale), int(width * scale)
    samples = F.interpolate(samples, size=(scaled_h, scaled_w), mode="bilinear", align_corners=False)
    top, left = (scaled_h - new_height) // 2, (scaled_w - new_width) // 2
    return samples[:, :, top : top + new_height, left : left + new_width]
