"""Down- and upsampling layers (1-d and 2-d) with Diffusers' key names (``conv`` or ``Conv2d_0``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Downsample1D", "Downsample2D", "KDownsample2D", "KUpsample2D", "Upsample1D", "Upsample2D"]


class Downsample2D(nn.Module):
    """Halve height and width: a stride-2 convolution (``use_conv``) or 2x2 average pooling.

    The convolution is stored as ``conv`` (``name="conv"`` or ``"op"``) or ``Conv2d_0``.
    """

    def __init__(
        self,
        channels: int,
        use_conv: bool = False,
        out_channels: int | None = None,
        padding: int = 1,
        name: str = "conv",
        kernel_size: int = 3,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.padding = padding
        self.name = name
        conv: nn.Module
        if use_conv:
            conv = nn.Conv2d(channels, self.out_channels, kernel_size=kernel_size, stride=2, padding=padding, bias=bias)
        else:
            if self.out_channels != channels:
                raise ValueError("Downsample2D without a convolution cannot change the number of channels")
            conv = nn.AvgPool2d(kernel_size=2, stride=2)
        if name == "Conv2d_0":
            self.Conv2d_0 = conv
        else:
            self.conv = conv

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.use_conv and self.padding == 0:
            hidden_states = F.pad(hidden_states, (0, 1, 0, 1), mode="constant", value=0)
        layer = self.Conv2d_0 if self.name == "Conv2d_0" else self.conv
        return layer(hidden_states)  # type: ignore[no-any-return]


class Upsample2D(nn.Module):
    """Double height and width: nearest interpolation (then a convolution when ``use_conv``), or a
    transposed convolution. Pass ``output_size`` to force the output size."""

    def __init__(
        self,
        channels: int,
        use_conv: bool = False,
        use_conv_transpose: bool = False,
        out_channels: int | None = None,
        name: str = "conv",
        kernel_size: int | None = None,
        padding: int = 1,
        bias: bool = True,
        interpolate: bool = True,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_conv_transpose = use_conv_transpose
        self.name = name
        self.interpolate = interpolate
        conv: nn.Module | None = None
        if use_conv_transpose:
            conv = nn.ConvTranspose2d(
                channels, self.out_channels, kernel_size=kernel_size or 4, stride=2, padding=padding, bias=bias
            )
        elif use_conv:
            conv = nn.Conv2d(channels, self.out_channels, kernel_size=kernel_size or 3, padding=padding, bias=bias)
        if name == "conv":
            self.conv = conv
        else:
            self.Conv2d_0 = conv

    def forward(self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.use_conv_transpose:
            return self.conv(hidden_states)  # type: ignore[no-any-return,misc]
        if self.interpolate:
            if output_size is None:
                hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
            else:
                hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        if self.use_conv:
            layer = self.conv if self.name == "conv" else self.Conv2d_0
            if layer is None:
                raise RuntimeError("Upsample2D.forward: internal check failed: layer is not None")
            hidden_states = layer(hidden_states)
        return hidden_states


class Downsample1D(nn.Module):
    """Halve the length: a stride-2 ``Conv1d`` (``use_conv``) or average pooling (key ``conv``)."""

    def __init__(
        self,
        channels: int,
        use_conv: bool = False,
        out_channels: int | None = None,
        padding: int = 1,
        name: str = "conv",
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.conv: nn.Module
        if use_conv:
            self.conv = nn.Conv1d(channels, self.out_channels, 3, stride=2, padding=padding)
        else:
            if self.out_channels != channels:
                raise ValueError("Downsample1D without a convolution cannot change the number of channels")
            self.conv = nn.AvgPool1d(kernel_size=2, stride=2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.conv(inputs)  # type: ignore[no-any-return]


class Upsample1D(nn.Module):
    """Double the length: transposed convolution, or nearest interpolation then an optional ``Conv1d``."""

    def __init__(
        self,
        channels: int,
        use_conv: bool = False,
        use_conv_transpose: bool = False,
        out_channels: int | None = None,
        name: str = "conv",
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_conv_transpose = use_conv_transpose
        self.conv: nn.Module | None = None
        if use_conv_transpose:
            self.conv = nn.ConvTranspose1d(channels, self.out_channels, 4, 2, 1)
        elif use_conv:
            self.conv = nn.Conv1d(channels, self.out_channels, 3, padding=1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.use_conv_transpose:
            if self.conv is None:
                raise RuntimeError("Upsample1D.forward: internal check failed: self.conv is not None")
            return self.conv(inputs)  # type: ignore[no-any-return]
        outputs = F.interpolate(inputs, scale_factor=2.0, mode="nearest")
        if self.conv is not None:
            outputs = self.conv(outputs)
        return outputs


class _KResample2D(nn.Module):
    """Per-channel resampling by two with the separable kernel ``[1, 3, 3, 1] / 8`` (K-diffusion UNets),
    reflect padding; the kernel is a non-persistent buffer (no state-dict key)."""

    kernel: torch.Tensor

    def __init__(self, pad_mode: str = "reflect", gain: float = 1.0) -> None:
        super().__init__()
        self.pad_mode = pad_mode
        k1 = torch.tensor([[1 / 8, 3 / 8, 3 / 8, 1 / 8]]) * gain
        self.pad = k1.shape[1] // 2 - 1
        self.register_buffer("kernel", k1.T @ k1, persistent=False)

    def _weight(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel on the diagonal of a ``(C, C, 4, 4)`` weight: each channel filtered alone."""
        c = x.shape[1]
        weight = x.new_zeros(c, c, *self.kernel.shape)
        idx = torch.arange(c, device=x.device)
        weight[idx, idx] = self.kernel.to(weight)
        return weight


class KDownsample2D(_KResample2D):
    """Halve height and width: reflect-pad by 1, filter, stride 2. ``(B, C, H, W) -> (B, C, H/2, W/2)``."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.pad(inputs, (self.pad,) * 4, self.pad_mode)
        return F.conv2d(x, self._weight(x), stride=2)


class KUpsample2D(_KResample2D):
    """Double height and width: reflect-pad, transposed filter (gain 2), stride 2.
    ``(B, C, H, W) -> (B, C, 2H, 2W)``."""

    def __init__(self, pad_mode: str = "reflect") -> None:
        super().__init__(pad_mode, gain=2.0)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.pad(inputs, ((self.pad + 1) // 2,) * 4, self.pad_mode)
        return F.conv_transpose2d(x, self._weight(x), stride=2, padding=self.pad * 2 + 1)
