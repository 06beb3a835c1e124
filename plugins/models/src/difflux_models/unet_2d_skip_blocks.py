"""The NCSN++ blocks of score-SDE UNets (Song et al. 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations", the ``ncsnpp`` architecture): residual blocks with FIR
resampling and a parallel image-resolution *skip* path.

Down blocks downsample the input image alongside the features (FIR) and add it back through a
1x1 ``skip_conv``; up blocks project the features to an RGB skip image (``skip_norm``, SiLU,
3x3 ``skip_conv``) that is FIR-upsampled and summed level by level, and the UNet adds it to its
output. The block type names, options and state-dict keys are Diffusers'
(``SkipDownBlock2D``, ``AttnSkipDownBlock2D``, ``SkipUpBlock2D``, ``AttnSkipUpBlock2D``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from .layers.fir import FirDownsample2D, FirUpsample2D
from .layers.resnet import ResnetBlock2D
from .unet_2d_blocks import BlockOptions

__all__ = ["AttnSkipDownBlock2D", "AttnSkipUpBlock2D", "SkipDownBlock2D", "SkipUpBlock2D"]

#: residual scale of every NCSN++ block (Diffusers' default for these blocks)
SKIP_SCALE = math.sqrt(2.0)
#: channels of the skip image (RGB: Diffusers fixes it at 3)
SKIP_CHANNELS = 3


def _groups(channels: int) -> int:
    return min(channels // 4, 32)


def _resnet(o: BlockOptions, in_channels: int, out_channels: int, groups: int, **extra: Any) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=in_channels,
        out_channels=out_channels,
        temb_channels=o.temb_channels,
        eps=o.resnet_eps,
        groups=groups,
        groups_out=_groups(out_channels),
        dropout=o.dropout,
        time_embedding_norm=o.resnet_time_scale_shift,
        non_linearity=o.resnet_act_fn,
        output_scale_factor=SKIP_SCALE,
        **extra,
    )


def _attention(o: BlockOptions, channels: int) -> nn.Module:
    """The blocks' self-attention: GroupNorm of 32 groups, output scaled by ``1/sqrt(2)``."""
    make = dataclasses.replace(o, output_scale_factor=SKIP_SCALE, resnet_groups=32).self_attention()
    return make(0, channels)


class SkipDownBlock2D(nn.Module):
    """Residual blocks (each optionally followed by self-attention), then a FIR-downsampling
    residual block; the skip image is FIR-downsampled and added through ``skip_conv``.

    ``forward(hidden_states (B, C_in, H, W), temb (B, T), skip_sample (B, 3, H, W))`` returns
    ``(hidden (B, C_out, H/2, W/2), skip states, skip_sample (B, 3, H/2, W/2))``.
    """

    has_cross_attention = False
    uses_skip_sample = True
    resnets: nn.ModuleList

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        options: BlockOptions,
        add_downsample: bool = True,
        *,
        with_attention: bool = False,
    ) -> None:
        super().__init__()
        o = options
        resnets: list[nn.Module] = []
        attentions: list[nn.Module] = []
        for i in range(o.num_layers):
            ch = in_channels if i == 0 else out_channels
            resnets.append(_resnet(o, ch, out_channels, _groups(ch)))
            if with_attention:
                attentions.append(_attention(o, out_channels))
        if with_attention:
            self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.resnet_down: nn.Module | None = None
        self.downsamplers: nn.ModuleList | None = None
        self.skip_conv: nn.Module | None = None
        if add_downsample:
            self.resnet_down = _resnet(
                o, out_channels, out_channels, _groups(out_channels), use_in_shortcut=True, down=True, kernel="fir"
            )
            self.downsamplers = nn.ModuleList([FirDownsample2D(out_channels, out_channels=out_channels)])
            self.skip_conv = nn.Conv2d(SKIP_CHANNELS, out_channels, kernel_size=1)

    @classmethod
    def build(
        cls, *, in_channels: int, out_channels: int, add_downsample: bool, options: BlockOptions
    ) -> SkipDownBlock2D:
        return cls(in_channels, out_channels, options, add_downsample)

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor | None, skip_sample: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
        attentions = getattr(self, "attentions", None)
        states: tuple[torch.Tensor, ...] = ()
        for i, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states, temb)
            if attentions is not None:
                hidden_states = attentions[i](hidden_states)
            states += (hidden_states,)
        if self.resnet_down is not None and self.downsamplers is not None and self.skip_conv is not None:
            hidden_states = self.resnet_down(hidden_states, temb)
            for down in self.downsamplers:
                skip_sample = down(skip_sample)
            hidden_states = self.skip_conv(skip_sample) + hidden_states
            states += (hidden_states,)
        return hidden_states, states, skip_sample


class AttnSkipDownBlock2D(SkipDownBlock2D):
    """:class:`SkipDownBlock2D` with self-attention after each residual block."""

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions, add_downsample: bool = True) -> None:
        super().__init__(in_channels, out_channels, options, add_downsample, with_attention=True)


class SkipUpBlock2D(nn.Module):
    """Residual blocks fed the skip states, optionally one self-attention, then the skip image:
    the incoming one FIR-upsampled plus ``skip_conv(act(skip_norm(hidden)))``; then a
    FIR-upsampling residual block.

    ``forward(hidden_states, res_hidden_states_tuple, temb, skip_sample (B, 3, H/2, W/2) or None)``
    returns ``(hidden, skip_sample (B, 3, H, W))``.
    """

    has_cross_attention = False
    uses_skip_sample = True
    resnets: nn.ModuleList

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        options: BlockOptions,
        add_upsample: bool = True,
        *,
        with_attention: bool = False,
    ) -> None:
        super().__init__()
        o = options
        n = o.num_layers
        resnets: list[nn.Module] = []
        for i in range(n):
            skip_ch = in_channels if i == n - 1 else out_channels
            res_in = prev_output_channel if i == 0 else out_channels
            # Diffusers' attention variant computes the groups as ``res_in + skip_ch // 4``: kept for its checkpoints
            groups = min(res_in + skip_ch // 4, 32) if with_attention else _groups(res_in + skip_ch)
            resnets.append(_resnet(o, res_in + skip_ch, out_channels, groups))
        if with_attention:
            self.attentions = nn.ModuleList([_attention(o, out_channels)])
        self.resnets = nn.ModuleList(resnets)
        self.upsampler = FirUpsample2D(in_channels, out_channels=out_channels)
        self.resnet_up: nn.Module | None = None
        self.skip_conv: nn.Module | None = None
        self.skip_norm: nn.Module | None = None
        self.act: nn.Module | None = None
        if add_upsample:
            self.resnet_up = _resnet(
                o, out_channels, out_channels, _groups(out_channels), use_in_shortcut=True, up=True, kernel="fir"
            )
            self.skip_conv = nn.Conv2d(out_channels, SKIP_CHANNELS, kernel_size=3, padding=1)
            self.skip_norm = nn.GroupNorm(_groups(out_channels), out_channels, eps=o.resnet_eps, affine=True)
            self.act = nn.SiLU()

    @classmethod
    def build(
        cls,
        *,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        add_upsample: bool,
        options: BlockOptions,
    ) -> SkipUpBlock2D:
        return cls(in_channels, prev_output_channel, out_channels, options, add_upsample)

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None,
        skip_sample: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        skips = list(res_hidden_states_tuple)
        for resnet in self.resnets:
            hidden_states = resnet(torch.cat([hidden_states, skips.pop()], dim=1), temb)
        attentions = getattr(self, "attentions", None)
        if attentions is not None:
            hidden_states = attentions[0](hidden_states)
        if skip_sample is not None:
            skip_sample = self.upsampler(skip_sample)
        if self.resnet_up is not None:
            if not (self.skip_conv is not None and self.skip_norm is not None and self.act is not None):
                raise RuntimeError(
                    "SkipUpBlock2D.forward: internal check failed: "
                    "self.skip_conv is not None and self.skip_norm is not None and self.act is not None"
                )
            projected = self.skip_conv(self.act(self.skip_norm(hidden_states)))
            skip_sample = projected if skip_sample is None else skip_sample + projected
            hidden_states = self.resnet_up(hidden_states, temb)
        return hidden_states, skip_sample


class AttnSkipUpBlock2D(SkipUpBlock2D):
    """:class:`SkipUpBlock2D` with one self-attention after the residual blocks."""

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        options: BlockOptions,
        add_upsample: bool = True,
    ) -> None:
        super().__init__(in_channels, prev_output_channel, out_channels, options, add_upsample, with_attention=True)
