"""Small image filters the guidance methods share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gaussian_blur_2d", "smooth_3x3"]


def _gaussian_1d(size: int, sigma: float, *, double_sigma: bool = False) -> torch.Tensor:
    """A normalised 1-d Gaussian over ``size`` taps centred on the middle (float32).

    ``double_sigma``: the exponent is ``((x - mu) / (2 sigma))**2`` (Attend-and-Excite's reference
    smoothing) instead of ``0.5 * ((x - mu) / sigma)**2``.
    """
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    pdf = torch.exp(-((x / (2 * sigma)) ** 2)) if double_sigma else torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def gaussian_blur_2d(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Blur each channel of ``img`` ``(batch, channels, h, w)`` with a ``kernel_size`` Gaussian of
    standard deviation ``sigma`` (reflect padding; same shape and dtype). SAG's degradation blur."""
    k = _gaussian_1d(kernel_size, sigma).to(device=img.device, dtype=img.dtype)
    kernel = torch.outer(k, k).expand(img.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(img, [pad, pad, pad, pad], mode="reflect"), kernel, groups=img.shape[-3])


def smooth_3x3(image: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """Attend-and-Excite's smoothing of one attention map ``(h, w)``: reflect-pad by one, then a 3x3
    Gaussian whose exponent is ``((x - mu) / (2 sigma))**2`` (as the authors' code). Returns ``(h, w)``."""
    k = _gaussian_1d(3, sigma, double_sigma=True)
    kernel = torch.outer(k, k).to(device=image.device, dtype=image.dtype)[None, None]
    padded = F.pad(image[None, None], (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernel)[0, 0]
