"""FIR-filtered resampling (score-SDE / NCSN++ models): zero-insert, pad, filter, decimate."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FirDownsample2D", "FirUpsample2D", "downsample_2d", "upfirdn2d", "upsample_2d"]


def _kernel_2d(kernel: Sequence[int] | None, factor: int, gain: float) -> torch.Tensor:
    k = torch.tensor(list(kernel) if kernel is not None else [1] * factor, dtype=torch.float32)
    if k.ndim == 1:
        k = torch.outer(k, k)
    return k / k.sum() * gain


def upfirdn2d(
    x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """Upsample by zero insertion, pad (negative = crop) on both axes, correlate with the flipped
    kernel per channel, keep every ``down``-th sample."""
    n, c, h, w = x.shape
    kh, kw = kernel.shape
    x = x.reshape(n * c, 1, h, w)
    if up > 1:
        z = x.new_zeros(n * c, 1, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    x = x[:, :, max(-p0, 0) : x.shape[2] - max(-p1, 0), max(-p0, 0) : x.shape[3] - max(-p1, 0)]
    weight = torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).to(device=x.device, dtype=x.dtype)
    x = F.conv2d(x, weight)
    x = x[:, :, ::down, ::down]
    return x.reshape(n, c, x.shape[2], x.shape[3])


def upsample_2d(x: torch.Tensor, kernel: Sequence[int] | None = None, factor: int = 2, gain: float = 1) -> torch.Tensor:
    """Upsample by ``factor`` with a FIR filter (default: nearest)."""
    k = _kernel_2d(kernel, factor, gain * factor**2)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(
    x: torch.Tensor, kernel: Sequence[int] | None = None, factor: int = 2, gain: float = 1
) -> torch.Tensor:
    """Downsample by ``factor`` with a FIR filter (default: average pooling)."""
    k = _kernel_2d(kernel, factor, gain)
    p = k.shape[0] - factor
    return upfirdn2d(x, k, down=factor, pad=((p + 1) // 2, p // 2))


class _FirResample2D(nn.Module):
    """FIR resampling by two with a fixed kernel; no parameters."""

    def __init__(
        self, channels: int, out_channels: int | None = None, fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    ) -> None:
        super().__init__()
        self.fir_kernel = fir_kernel
        self.out_channels = out_channels if out_channels else channels


class FirUpsample2D(_FirResample2D):
    """FIR upsampling by two (the skip path of score-SDE UNets); no parameters."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return upsample_2d(hidden_states, self.fir_kernel, factor=2)


class FirDownsample2D(_FirResample2D):
    """FIR downsampling by two; no parameters."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return downsample_2d(hidden_states, self.fir_kernel, factor=2)
