"""``T2IAdapter``: a small convolutional network that turns a condition image into UNet feature offsets.

T2I-Adapter (Mou et al., *T2I-Adapter: Learning Adapters to Dig out More Controllable Ability for
Text-to-Image Diffusion Models*, 2023, arXiv:2302.08453) runs once per generation, not once per
step: pixel-unshuffle the condition image to the latent resolution, then a stack of residual
stages gives one feature map per UNet down block. The UNet adds them inside its down blocks
(``UNet2DConditionModel(down_intrablock_additional_residuals=...)``).

Three layouts, chosen by ``adapter_type`` (Diffusers' config key, and its state-dict keys):

* ``"full_adapter"`` (SD 1.x / 2.x): ``conv_in`` then one :class:`AdapterBlock` per entry of
  ``channels``, each after the first halving the resolution.
* ``"full_adapter_xl"`` (SDXL): the same blocks, but only the third one downsamples (SDXL's first
  down block keeps the latent size and its last has no downsampler).
* ``"light_adapter"``: :class:`LightAdapterBlock` stages that squeeze to a quarter of the width in
  between, plus one more downsampling stage than ``channels`` has entries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from difflux.modeling import ModelMixin
from torch import nn

__all__ = [
    "AdapterBlock",
    "AdapterResnetBlock",
    "FullAdapter",
    "FullAdapterXL",
    "LightAdapter",
    "LightAdapterBlock",
    "LightAdapterResnetBlock",
    "T2IAdapter",
]

#: the layouts ``adapter_type`` may name
ADAPTER_TYPES = ("full_adapter", "full_adapter_xl", "light_adapter")


def _pool() -> nn.AvgPool2d:
    return nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True)


class AdapterResnetBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(x)))`` at constant width (keys ``block1``, ``block2``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.block2(self.act(self.block1(x))) + x
        return out


class LightAdapterResnetBlock(AdapterResnetBlock):
    """As :class:`AdapterResnetBlock` with a 3x3 second convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.block2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)


class AdapterBlock(nn.Module):
    """Optional 2x average pooling (``down``), a 1x1 width change when the widths differ, then
    ``num_res_blocks`` :class:`AdapterResnetBlock` (keys ``in_conv``, ``resnets.N``)."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, down: bool = False) -> None:
        super().__init__()
        self.downsample = _pool() if down else None
        self.in_conv = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        self.resnets = nn.Sequential(*[AdapterResnetBlock(out_channels) for _ in range(num_res_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        out: torch.Tensor = self.resnets(x)
        return out


class LightAdapterBlock(nn.Module):
    """Optional 2x pooling, ``in_conv`` to ``out_channels // 4``, ``num_res_blocks``
    :class:`LightAdapterResnetBlock`, ``out_conv`` back to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, down: bool = False) -> None:
        super().__init__()
        mid = out_channels // 4
        self.downsample = _pool() if down else None
        self.in_conv = nn.Conv2d(in_channels, mid, kernel_size=1)
        self.resnets = nn.Sequential(*[LightAdapterResnetBlock(mid) for _ in range(num_res_blocks)])
        self.out_conv = nn.Conv2d(mid, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        out: torch.Tensor = self.out_conv(self.resnets(self.in_conv(x)))
        return out


class _Stages(nn.Module):
    """Pixel-unshuffle, optional ``conv_in``, then ``body`` stages; every stage's output is a feature."""

    conv_in: nn.Conv2d | None
    body: nn.ModuleList
    total_downscale_factor: int

    def __init__(self, downscale_factor: int) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(downscale_factor)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.unshuffle(x)
        if self.conv_in is not None:
            x = self.conv_in(x)
        features = []
        for block in self.body:
            x = block(x)
            features.append(x)
        return features


class FullAdapter(_Stages):
    """The ``"full_adapter"`` layout (see the module docstring)."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (320, 640, 1280, 1280),
        num_res_blocks: int = 2,
        downscale_factor: int = 8,
    ) -> None:
        super().__init__(downscale_factor)
        self.conv_in = nn.Conv2d(in_channels * downscale_factor**2, channels[0], kernel_size=3, padding=1)
        self.body = nn.ModuleList(
            [AdapterBlock(channels[0], channels[0], num_res_blocks)]
            + [AdapterBlock(channels[i - 1], channels[i], num_res_blocks, down=True) for i in range(1, len(channels))]
        )
        self.total_downscale_factor = downscale_factor * 2 ** (len(channels) - 1)


class FullAdapterXL(_Stages):
    """The ``"full_adapter_xl"`` layout (see the module docstring)."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (320, 640, 1280, 1280),
        num_res_blocks: int = 2,
        downscale_factor: int = 16,
    ) -> None:
        super().__init__(downscale_factor)
        self.conv_in = nn.Conv2d(in_channels * downscale_factor**2, channels[0], kernel_size=3, padding=1)
        blocks = []
        for i, width in enumerate(channels):
            source = channels[i - 1] if i in (1, 2) else width
            blocks.append(AdapterBlock(source, width, num_res_blocks, down=i == 2))
        self.body = nn.ModuleList(blocks)
        self.total_downscale_factor = downscale_factor * 2


class LightAdapter(_Stages):
    """The ``"light_adapter"`` layout (see the module docstring)."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (320, 640, 1280),
        num_res_blocks: int = 4,
        downscale_factor: int = 8,
    ) -> None:
        super().__init__(downscale_factor)
        self.conv_in = None
        widths = [in_channels * downscale_factor**2, *channels, channels[-1]]
        self.body = nn.ModuleList(
            [LightAdapterBlock(widths[i], widths[i + 1], num_res_blocks, down=i > 0) for i in range(len(channels) + 1)]
        )
        self.total_downscale_factor = downscale_factor * 2 ** len(channels)


class T2IAdapter(ModelMixin):
    """A T2I-Adapter (Diffusers' ``T2IAdapter`` format); see the module docstring for the method.

    :param in_channels: channels of the condition image (3 for RGB, 1 for sketches).
    :param channels: the width of each feature; with ``"full_adapter"`` / ``"full_adapter_xl"``
        one per UNet down block, with ``"light_adapter"`` one fewer than the features it gives.
    :param num_res_blocks: residual blocks per stage.
    :param downscale_factor: the pixel-unshuffle factor (the VAE's 8 for SD, 16 for the XL layout).
    :param adapter_type: ``"full_adapter"``, ``"full_adapter_xl"`` or ``"light_adapter"``.
    :raises ValueError: for another ``adapter_type`` or an empty ``channels``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (320, 640, 1280, 1280),
        num_res_blocks: int = 2,
        downscale_factor: int = 8,
        adapter_type: str = "full_adapter",
    ) -> None:
        super().__init__()
        if not channels:
            raise ValueError("T2IAdapter: channels is empty; give one width per feature map")
        layouts = {"full_adapter": FullAdapter, "full_adapter_xl": FullAdapterXL, "light_adapter": LightAdapter}
        layout = layouts.get(adapter_type)
        if layout is None:
            raise ValueError(
                f"T2IAdapter: adapter_type must be one of {', '.join(ADAPTER_TYPES)}; got {adapter_type!r}"
            )
        self.adapter: _Stages = layout(in_channels, list(channels), num_res_blocks, downscale_factor)

    @property
    def total_downscale_factor(self) -> int:
        """How much smaller than the condition image the last feature map is."""
        return int(self.adapter.total_downscale_factor)

    @property
    def downscale_factor(self) -> int:
        """The pixel-unshuffle factor: condition images must have sides that are multiples of it."""
        return int(self.adapter.unshuffle.downscale_factor)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps of a condition image batch ``x`` ``(batch, in_channels, H, W)`` in ``[0, 1]``.

        Feature ``i`` is ``(batch, channels_i, H / f_i, W / f_i)`` with ``f_0 = downscale_factor``;
        the list has one entry per UNet down block (``len(channels)``; ``+ 1`` for light adapters).

        :raises ValueError: when ``x`` is not 4-D with ``in_channels`` channels and sides that are
            multiples of ``downscale_factor``.
        """
        c = self.config.in_channels
        f = self.downscale_factor
        if x.ndim != 4 or x.shape[1] != c or x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"T2IAdapter takes (batch, {c}, H, W) condition images with H and W multiples of {f}; got "
                f"{tuple(x.shape)}"
            )
        features: list[torch.Tensor] = self.adapter(x)
        return features
