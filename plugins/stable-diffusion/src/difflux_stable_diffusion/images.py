"""Image and mask inputs of the Stable Diffusion pipelines: PIL, numpy or torch, as model-ready tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from difflux.image import normalize, numpy_to_pt, pil_to_numpy

__all__ = [
    "ImageInput",
    "default_size",
    "is_image_input",
    "preprocess_control_image",
    "preprocess_image",
    "preprocess_mask",
]

#: What ``image=`` / ``mask_image=`` accept: one image or a list, as PIL, ``HWC``/``NHWC`` numpy
#: arrays in ``[0, 1]``, or ``CHW``/``NCHW`` tensors in ``[0, 1]`` (tensors in ``[-1, 1]`` are taken as-is).
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | Sequence[PIL.Image.Image | np.ndarray | torch.Tensor]


def is_image_input(image: Any) -> bool:
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    return bool(items) and all(isinstance(i, (PIL.Image.Image, np.ndarray, torch.Tensor)) for i in items)


def default_size(image: Any, height: int | None, width: int | None, multiple: int) -> tuple[int, int]:
    """``(height, width)``: the given ones, else the image's, rounded down to a multiple of ``multiple``."""
    first = image[0] if isinstance(image, (list, tuple)) else image
    if isinstance(first, PIL.Image.Image):
        h, w = first.height, first.width
    elif isinstance(first, torch.Tensor):
        h, w = first.shape[-2], first.shape[-1]
    else:
        h, w = (first.shape[0], first.shape[1]) if first.ndim == 3 else (first.shape[1], first.shape[2])
    height = int(h) if height is None else height
    width = int(w) if width is None else width
    return height - height % multiple, width - width % multiple


#: PIL resampling filters by the names Diffusers' image processor configs use
RESAMPLE = {
    "lanczos": PIL.Image.Resampling.LANCZOS,
    "bicubic": PIL.Image.Resampling.BICUBIC,
    "bilinear": PIL.Image.Resampling.BILINEAR,
    "nearest": PIL.Image.Resampling.NEAREST,
}


def _to_tensor(
    image: Any,
    height: int | None,
    width: int | None,
    multiple: int,
    *,
    grayscale: bool,
    keep_channels: int | None,
    resample: str = "lanczos",
    reducing_gap: float | None = None,
) -> tuple[torch.Tensor, bool]:
    """``(NCHW float tensor, already_latents)``; PIL images resized with ``resample``, arrays and tensors nearest."""
    if not is_image_input(image):
        raise TypeError(
            f"image must be a PIL image, a numpy array or a torch tensor (or a list of them), got {type(image)}"
        )
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if isinstance(items[0], PIL.Image.Image):
        height, width = default_size(items[0], height, width, multiple)
        resized = [i.resize((width, height), resample=RESAMPLE[resample], reducing_gap=reducing_gap) for i in items]
        converted = [i.convert("L" if grayscale else "RGB") for i in resized]
        return numpy_to_pt(pil_to_numpy(converted)), False
    if isinstance(items[0], np.ndarray):
        if grayscale and items[0].ndim == 3 and len(items) == 1:
            items = [items[0][None] if items[0].shape[-1] == 1 else items[0][..., None]]
        arrays = np.concatenate(items) if items[0].ndim == 4 else np.stack(items)
        if arrays.ndim == 3:
            arrays = arrays[..., None]
        tensor = numpy_to_pt(arrays.astype(np.float32, copy=False))
    else:
        tensors = [t for t in items]
        tensor = torch.cat(tensors) if tensors[0].ndim == 4 else torch.stack(tensors)
        if grayscale and tensor.ndim == 3:
            tensor = tensor.unsqueeze(1)
        if keep_channels is not None and tensor.shape[1] == keep_channels:
            return tensor, True
    height, width = default_size(tensor, height, width, multiple)
    return torch.nn.functional.interpolate(tensor, size=(height, width)), False


def preprocess_image(
    image: ImageInput,
    height: int | None = None,
    width: int | None = None,
    *,
    multiple: int = 8,
    latent_channels: int | None = None,
    resample: str = "lanczos",
    reducing_gap: float | None = None,
) -> torch.Tensor:
    """Images as an ``NCHW`` tensor in ``[-1, 1]``, sized to a multiple of ``multiple``.

    A tensor with ``latent_channels`` channels is taken as latents and returned unchanged.
    PIL images are resized with ``resample`` (a key of :data:`RESAMPLE`) and PIL's ``reducing_gap``
    (``None``: exact resampling; Kandinsky's processors use 1).
    """
    tensor, latents = _to_tensor(
        image,
        height,
        width,
        multiple,
        grayscale=False,
        keep_channels=latent_channels,
        resample=resample,
        reducing_gap=reducing_gap,
    )
    if latents or tensor.min() < 0:  # latents, or already in [-1, 1]
        return tensor
    return normalize(tensor)


def preprocess_control_image(
    image: ImageInput, height: int | None = None, width: int | None = None, *, multiple: int = 8
) -> torch.Tensor:
    """Condition images (ControlNet, T2I-Adapter) as an ``NCHW`` RGB tensor in ``[0, 1]``, not normalised.

    PIL images are converted to RGB and resized (Lanczos) to ``height`` x ``width`` (default: their
    own size rounded down to a multiple of ``multiple``); arrays and tensors are resized nearest.
    """
    tensor, _ = _to_tensor(image, height, width, multiple, grayscale=False, keep_channels=None)
    return tensor


def preprocess_mask(
    mask: ImageInput, height: int | None = None, width: int | None = None, *, multiple: int = 8
) -> torch.Tensor:
    """Masks as an ``N1HW`` tensor of 0 (keep) and 1 (repaint), thresholded at 0.5."""
    tensor, _ = _to_tensor(mask, height, width, multiple, grayscale=True, keep_channels=None)
    if tensor.shape[1] != 1:
        tensor = tensor[:, :1]
    return (tensor >= 0.5).to(tensor.dtype)
