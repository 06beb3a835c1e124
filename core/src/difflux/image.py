"""Turning model outputs into images: tensors, arrays and PIL images, in the Diffusers conventions.

Pixel values are floats in ``[0, 1]`` (``numpy`` arrays are ``NHWC``, torch tensors ``NCHW``);
models work in ``[-1, 1]`` and :func:`denormalize` maps between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import PIL.Image
    import torch

__all__ = [
    "OutputType",
    "denormalize",
    "normalize",
    "numpy_to_pil",
    "numpy_to_pt",
    "pil_to_numpy",
    "postprocess",
    "pt_to_numpy",
    "pt_to_pil",
]

#: What a pipeline's ``output_type`` may ask for.
OutputType = Literal["pil", "np", "pt"]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Map pixel values from ``[0, 1]`` to the model range ``[-1, 1]``."""
    return images * 2.0 - 1.0


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Map model outputs from ``[-1, 1]`` to pixel values in ``[0, 1]`` (clamped)."""
    return (images / 2 + 0.5).clamp(0, 1)


def pt_to_numpy(images: torch.Tensor) -> np.ndarray:
    """An ``NCHW`` tensor as a float32 ``NHWC`` array (detached, on the CPU)."""
    if images.ndim != 4:
        raise ValueError(f"expected a batch of images shaped (N, C, H, W), got shape {tuple(images.shape)}")
    return images.detach().cpu().permute(0, 2, 3, 1).float().numpy()


def numpy_to_pt(images: np.ndarray) -> torch.Tensor:
    """An ``NHWC`` (or ``HWC``, or ``NHW`` grey) array as an ``NCHW`` float tensor."""
    import torch

    if images.ndim == 3:
        images = images[..., None] if images.shape[-1] not in (1, 3, 4) else images[None, ...]
    if images.ndim != 4:
        raise ValueError(f"expected images shaped (N, H, W, C), got shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
    """Float images in ``[0, 1]`` (``NHWC`` or one ``HWC`` image) as 8-bit PIL images.

    One channel gives mode ``"L"``, three ``"RGB"``, four ``"RGBA"``; values are rounded to
    the nearest of the 256 levels.
    """
    import PIL.Image

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None, ...]
    if images.ndim != 4:
        raise ValueError(f"expected images shaped (N, H, W, C) or (H, W, C), got shape {images.shape}")
    pixels = (np.clip(images, 0.0, 1.0) * 255).round().astype("uint8")
    channels = pixels.shape[-1]
    if channels == 1:
        return [PIL.Image.fromarray(p[..., 0], mode="L") for p in pixels]
    if channels not in (3, 4):
        raise ValueError(f"cannot make a PIL image from {channels} channels; expected 1, 3 or 4")
    return [PIL.Image.fromarray(p) for p in pixels]


def pt_to_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """An ``NCHW`` tensor of pixel values in ``[0, 1]`` as PIL images."""
    return numpy_to_pil(pt_to_numpy(images))


def pil_to_numpy(images: PIL.Image.Image | Sequence[PIL.Image.Image]) -> np.ndarray:
    """PIL images as one float32 ``NHWC`` array in ``[0, 1]`` (grey images get one channel)."""
    import PIL.Image

    items = [images] if isinstance(images, PIL.Image.Image) else list(images)
    arrays = []
    for image in items:
        array = np.asarray(image, dtype=np.float32) / 255.0
        arrays.append(array[..., None] if array.ndim == 2 else array)
    return np.stack(arrays)


def postprocess(
    images: torch.Tensor, output_type: OutputType = "pil", *, do_denormalize: bool = True
) -> list[PIL.Image.Image] | np.ndarray | torch.Tensor:
    """Decoded model output (``NCHW``, in ``[-1, 1]``) as what ``output_type`` asks for."""
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type={output_type!r}: expected 'pil', 'np' or 'pt'")
    if do_denormalize:
        images = denormalize(images)
    if output_type == "pt":
        return images
    array = pt_to_numpy(images)
    return array if output_type == "np" else numpy_to_pil(array)
