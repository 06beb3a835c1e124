"""ControlNet-XS: a small control network that talks to the UNet at every layer.

ControlNet-XS (Zavadski, Feiden and Rother, *ControlNet-XS: Designing an Efficient and Effective
Architecture for Controlling Text-to-Image Diffusion Models*, 2023, arXiv:2312.06573) runs a thin
copy of the UNet encoder (the *control* branch, a few percent of the UNet's width) beside the
frozen UNet (the *base* branch). Before each control layer the base features are concatenated in
(``base_to_ctrl``, zero convolutions), after it the control features are added back to the base
(``ctrl_to_base``, zero convolutions times ``conditioning_scale``); the decoder gets the control
branch's skip states the same way. Because the two branches exchange features at every layer,
the UNet and the control branch run as one fused model:

* :class:`ControlNetXSAdapter`: the control branch alone, as trained and published (it cannot run
  by itself);
* :class:`UNetControlNetXSModel`: a ``UNet2DConditionModel`` fused with an adapter
  (:meth:`UNetControlNetXSModel.from_unet`), which the pipelines run.

Class names, config keys and state-dict keys are Diffusers', so published folders (SD 2.1 and SDXL
ControlNet-XS) load as they are.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import torch
from difflux.modeling import ModelMixin
from difflux.outputs import BaseOutput
from difflux_models.controlnet_blocks import ControlNetConditioningEmbedding, zero_conv
from difflux_models.layers.attention import AttentionProcessorMixin
from difflux_models.layers.embeddings import TimestepEmbedding, Timesteps
from difflux_models.layers.resnet import ResnetBlock2D
from difflux_models.layers.sampling import Downsample2D, Upsample2D
from difflux_models.layers.transformer_2d import SpatialTransformer2D
from difflux_models.unet_2d_blocks import AttentionContext, BlockOptions, UNetMidBlock2DCrossAttn
from difflux_models.unet_2d_condition import UNet2DConditionModel, timesteps_tensor
from torch import nn

__all__ = [
    "ControlNetXSAdapter",
    "ControlNetXSCrossAttnDownBlock2D",
    "ControlNetXSCrossAttnMidBlock2D",
    "ControlNetXSCrossAttnUpBlock2D",
    "ControlNetXSOutput",
    "UNetControlNetXSModel",
]


@dataclasses.dataclass
class ControlNetXSOutput(BaseOutput):
    """The fused model's noise prediction ``sample``: ``(batch, 4, h, w)``."""

    sample: torch.Tensor


def find_largest_factor(number: int, max_factor: int) -> int:
    """The largest divisor of ``number`` at most ``max_factor`` (the control branch's GroupNorm group counts)."""
    for factor in range(min(number, max_factor), 0, -1):
        if number % factor == 0:
            return factor
    return 1


def _per_block(value: Any, n: int, name: str, owner: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{owner}: {name} has {len(value)} entries but there are {n} down blocks")
        return list(value)
    return [value] * n


def _transformer(
    heads: int, channels: int, layers: int, cross_dim: int, groups: int, linear: bool, upcast: bool
) -> SpatialTransformer2D:
    return SpatialTransformer2D(
        heads,
        channels // heads,
        in_channels=channels,
        num_layers=layers,
        cross_attention_dim=cross_dim,
        norm_num_groups=groups,
        use_linear_projection=linear,
        upcast_attention=upcast,
    )


@dataclasses.dataclass
class _Attn:
    """Attention settings shared by a block's spatial transformers."""

    cross_dim: int
    layers: int
    linear: bool
    upcast: bool


class _CtrlMidBlock(UNetMidBlock2DCrossAttn):
    """``UNetMidBlock2DCrossAttn`` that narrows from ``in_channels`` to ``out_channels`` (the control branch's)."""

    def __init__(self, in_channels: int, out_channels: int, temb: int, groups: int, heads: int, attn: _Attn) -> None:
        nn.Module.__init__(self)
        first = ResnetBlock2D(in_channels=in_channels, out_channels=out_channels, temb_channels=temb, groups=groups)
        transformer = _transformer(heads, out_channels, attn.layers, attn.cross_dim, groups, attn.linear, attn.upcast)
        second = ResnetBlock2D(in_channels=out_channels, out_channels=out_channels, temb_channels=temb, groups=groups)
        self.attentions = nn.ModuleList([transformer])
        self.resnets = nn.ModuleList([first, second])


def _ctrl_resnet(ctrl_in: int, base_in: int, ctrl_out: int, temb: int, max_groups: int) -> ResnetBlock2D:
    return ResnetBlock2D(
        in_channels=ctrl_in + base_in,
        out_channels=ctrl_out,
        temb_channels=temb,
        groups=find_largest_factor(ctrl_in + base_in, max_groups),
        groups_out=find_largest_factor(ctrl_out, max_groups),
        eps=1e-5,
    )


def _ctrl_mid(base: int, ctrl: int, temb: int, max_groups: int, heads: int, attn: _Attn) -> _CtrlMidBlock:
    groups = find_largest_factor(math.gcd(ctrl, ctrl + base), max_groups)
    return _CtrlMidBlock(ctrl + base, ctrl, temb, groups, heads, attn)


def _skip_widths(ctrl_block_out_channels: Sequence[int]) -> list[int]:
    """The widths of the control branch's skip states, in encoder order."""
    widths = [ctrl_block_out_channels[0]]
    last = len(ctrl_block_out_channels) - 1
    for i, width in enumerate(ctrl_block_out_channels):
        widths += [width] * (3 if i < last else 2)
    return widths


# -- the adapter (the control branch alone) ------------------------------------------------


class DownBlockControlNetXSAdapter(nn.Module):
    """The control part of one down block (keys ``resnets``, ``base_to_ctrl``, ``ctrl_to_base``,
    ``attentions``, ``downsamplers``)."""

    def __init__(
        self,
        base_in: int,
        base_out: int,
        ctrl_in: int,
        ctrl_out: int,
        temb: int,
        max_groups: int,
        heads: int,
        attn: _Attn | None,
        add_downsample: bool,
    ) -> None:
        super().__init__()
        resnets, b2c, c2b, attentions = [], [], [], []
        for i in range(2):
            b_in, c_in = (base_in, ctrl_in) if i == 0 else (base_out, ctrl_out)
            b2c.append(zero_conv(b_in))
            resnets.append(_ctrl_resnet(c_in, b_in, ctrl_out, temb, max_groups))
            if attn is not None:
                groups = find_largest_factor(ctrl_out, max_groups)
                attentions.append(
                    _transformer(heads, ctrl_out, attn.layers, attn.cross_dim, groups, attn.linear, attn.upcast)
                )
            c2b.append(zero_conv(ctrl_out, base_out))
        self.downsamplers: Downsample2D | None = None
        if add_downsample:
            b2c.append(zero_conv(base_out))
            self.downsamplers = Downsample2D(ctrl_out + base_out, use_conv=True, out_channels=ctrl_out, name="op")
            c2b.append(zero_conv(ctrl_out, base_out))
        self.resnets = nn.ModuleList(resnets)
        self.base_to_ctrl = nn.ModuleList(b2c)
        self.ctrl_to_base = nn.ModuleList(c2b)
        self.attentions = nn.ModuleList(attentions) if attn is not None else None


class MidBlockControlNetXSAdapter(nn.Module):
    """The control part of the mid block (keys ``midblock``, ``base_to_ctrl``, ``ctrl_to_base``)."""

    def __init__(self, base: int, ctrl: int, temb: int, max_groups: int, heads: int, attn: _Attn) -> None:
        super().__init__()
        self.base_to_ctrl = zero_conv(base)
        self.midblock = _ctrl_mid(base, ctrl, temb, max_groups, heads, attn)
        self.ctrl_to_base = zero_conv(ctrl, base)


class UpBlockControlNetXSAdapter(nn.Module):
    """The control part of one up block: zero convolutions from control skips to the base decoder."""

    def __init__(self, ctrl_to_base: Sequence[nn.Conv2d]) -> None:
        super().__init__()
        self.ctrl_to_base = nn.ModuleList(ctrl_to_base)


def _up_links(base_block_out_channels: Sequence[int], ctrl_block_out_channels: Sequence[int]) -> list[list[nn.Conv2d]]:
    """Per up block, the three zero convolutions from the control skips to the base decoder's inputs."""
    skips = _skip_widths(ctrl_block_out_channels)
    widths = list(reversed(base_block_out_channels))
    out = []
    prev = widths[0]
    for width in widths:
        convs = []
        for j in range(3):
            convs.append(zero_conv(skips.pop(), prev if j == 0 else width))
        out.append(convs)
        prev = width
    return out


class ControlNetXSAdapter(ModelMixin, AttentionProcessorMixin):
    """The control branch of ControlNet-XS (Diffusers' ``ControlNetXSAdapter`` format).

    It only runs fused with a UNet: ``UNetControlNetXSModel.from_unet(unet, adapter)``.
    ``num_attention_heads`` are the control branch's heads per block; ``base_block_out_channels``,
    ``cross_attention_dim``, ``down_block_types``, ``transformer_layers_per_block``,
    ``upcast_attention`` and ``use_linear_projection`` describe the UNet it was trained for.

    :raises ValueError: for an unknown ``conditioning_channel_order`` or lists whose lengths do not
        match ``down_block_types``.
    """

    def __init__(
        self,
        conditioning_channels: int = 3,
        conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        time_embedding_mix: float = 1.0,
        learn_time_embedding: bool = False,
        num_attention_heads: int | tuple[int, ...] = 4,
        block_out_channels: tuple[int, ...] = (4, 8, 16, 16),
        base_block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        cross_attention_dim: int = 1024,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        sample_size: int | None = 96,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        upcast_attention: bool = True,
        max_norm_num_groups: int = 32,
        use_linear_projection: bool = True,
    ) -> None:
        super().__init__()
        name = "ControlNetXSAdapter"
        if conditioning_channel_order not in ("rgb", "bgr"):
            raise ValueError(
                f"{name}: conditioning_channel_order must be 'rgb' or 'bgr', got {conditioning_channel_order!r}"
            )
        n = len(down_block_types)
        if len(block_out_channels) != n or len(base_block_out_channels) != n:
            raise ValueError(
                f"{name}: block_out_channels ({len(block_out_channels)}) and base_block_out_channels "
                f"({len(base_block_out_channels)}) need one entry per down block ({n})"
            )
        layers = _per_block(transformer_layers_per_block, n, "transformer_layers_per_block", name)
        cross = _per_block(cross_attention_dim, n, "cross_attention_dim", name)
        heads = _per_block(num_attention_heads, n, "num_attention_heads", name)
        temb = base_block_out_channels[0] * 4

        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=block_out_channels[0],
            block_out_channels=conditioning_embedding_out_channels,
            conditioning_channels=conditioning_channels,
        )
        self.time_embedding = TimestepEmbedding(base_block_out_channels[0], temb) if learn_time_embedding else None
        self.down_blocks = nn.ModuleList()
        self.up_connections = nn.ModuleList()
        self.conv_in = nn.Conv2d(4, block_out_channels[0], kernel_size=3, padding=1)
        self.control_to_base_for_conv_in = zero_conv(block_out_channels[0], base_block_out_channels[0])
        for i, block_type in enumerate(down_block_types):
            attn = (
                _Attn(cross[i], layers[i], use_linear_projection, upcast_attention)
                if "CrossAttn" in block_type
                else None
            )
            self.down_blocks.append(
                DownBlockControlNetXSAdapter(
                    base_block_out_channels[max(i - 1, 0)],
                    base_block_out_channels[i],
                    block_out_channels[max(i - 1, 0)],
                    block_out_channels[i],
                    temb,
                    max_norm_num_groups,
                    heads[i],
                    attn,
                    add_downsample=i < n - 1,
                )
            )
        # Diffusers builds the adapter's mid block with the default group cap (32), whatever max_norm_num_groups says
        mid_attn = _Attn(cross[-1], layers[-1], use_linear_projection, upcast_attention)
        self.mid_block = MidBlockControlNetXSAdapter(
            base_block_out_channels[-1], block_out_channels[-1], temb, 32, heads[-1], mid_attn
        )
        for convs in _up_links(base_block_out_channels, block_out_channels):
            self.up_connections.append(UpBlockControlNetXSAdapter(convs))

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        size_ratio: float | None = None,
        block_out_channels: Sequence[int] | None = None,
        num_attention_heads: Sequence[int] | int | None = None,
        learn_time_embedding: bool = False,
        time_embedding_mix: float = 1.0,
        conditioning_channels: int = 3,
        conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ) -> ControlNetXSAdapter:
        """A fresh adapter (zero convolutions at zero) for ``unet``: widths ``size_ratio`` x the UNet's,
        or ``block_out_channels`` as given.

        :raises ValueError: unless exactly one of ``size_ratio`` and ``block_out_channels`` is given.
        """
        if (size_ratio is None) == (block_out_channels is None):
            raise ValueError(
                "ControlNetXSAdapter.from_unet: pass exactly one of block_out_channels (absolute widths) or "
                "size_ratio (a fraction of the UNet's widths)"
            )
        c = unet.config
        heads = num_attention_heads if num_attention_heads is not None else c.attention_head_dim
        widths = list(block_out_channels or [int(b * size_ratio) for b in c.block_out_channels])  # type: ignore[operator]
        model = cls(
            conditioning_channels=conditioning_channels,
            conditioning_channel_order=conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            time_embedding_mix=time_embedding_mix,
            learn_time_embedding=learn_time_embedding,
            num_attention_heads=tuple(heads) if isinstance(heads, Sequence) else heads,
            block_out_channels=tuple(widths),
            base_block_out_channels=c.block_out_channels,
            cross_attention_dim=c.cross_attention_dim,
            down_block_types=c.down_block_types,
            sample_size=c.sample_size,
            transformer_layers_per_block=c.transformer_layers_per_block,
            upcast_attention=c.upcast_attention,
            max_norm_num_groups=c.norm_num_groups,
            use_linear_projection=c.use_linear_projection,
        )
        return model.to(unet.dtype)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Always raises: the adapter runs fused with a UNet.

        :raises ValueError: always; use ``UNetControlNetXSModel.from_unet(unet, adapter)``.
        """
        raise ValueError(
            "ControlNetXSAdapter cannot run by itself; fuse it with a UNet: "
            "UNetControlNetXSModel.from_unet(unet, adapter)"
        )


# -- the fused model ----------------------------------------------------------------------------


class ControlNetXSCrossAttnDownBlock2D(nn.Module):
    """A UNet down block (``base_*``) beside its control part (``ctrl_*``), with the zero convolutions between."""

    def __init__(
        self,
        base: tuple[int, int],
        ctrl: tuple[int, int],
        temb: int,
        norm_num_groups: int,
        ctrl_max_groups: int,
        heads: tuple[int, int],
        attn: _Attn | None,
        add_downsample: bool,
    ) -> None:
        super().__init__()
        (base_in, base_out), (ctrl_in, ctrl_out) = base, ctrl
        o = BlockOptions(temb_channels=temb, resnet_groups=norm_num_groups)
        base_resnets, base_attns, ctrl_resnets, ctrl_attns, b2c, c2b = [], [], [], [], [], []
        for i in range(2):
            b_in, c_in = (base_in, ctrl_in) if i == 0 else (base_out, ctrl_out)
            b2c.append(zero_conv(b_in))
            base_resnets.append(o.resnet(b_in, base_out))
            ctrl_resnets.append(_ctrl_resnet(c_in, b_in, ctrl_out, temb, ctrl_max_groups))
            if attn is not None:
                a = attn
                base_attns.append(
                    _transformer(heads[0], base_out, a.layers, a.cross_dim, norm_num_groups, a.linear, a.upcast)
                )
                groups = find_largest_factor(ctrl_out, ctrl_max_groups)
                ctrl_attns.append(_transformer(heads[1], ctrl_out, a.layers, a.cross_dim, groups, a.linear, a.upcast))
            c2b.append(zero_conv(ctrl_out, base_out))
        self.base_downsamplers: Downsample2D | None = None
        self.ctrl_downsamplers: Downsample2D | None = None
        if add_downsample:
            b2c.append(zero_conv(base_out))
            self.base_downsamplers = Downsample2D(base_out, use_conv=True, out_channels=base_out, name="op")
            self.ctrl_downsamplers = Downsample2D(ctrl_out + base_out, use_conv=True, out_channels=ctrl_out, name="op")
            c2b.append(zero_conv(ctrl_out, base_out))
        self.base_resnets = nn.ModuleList(base_resnets)
        self.ctrl_resnets = nn.ModuleList(ctrl_resnets)
        self.base_attentions = nn.ModuleList(base_attns) if attn is not None else None
        self.ctrl_attentions = nn.ModuleList(ctrl_attns) if attn is not None else None
        self.base_to_ctrl = nn.ModuleList(b2c)
        self.ctrl_to_base = nn.ModuleList(c2b)

    def forward(
        self,
        h_base: torch.Tensor,
        h_ctrl: torch.Tensor,
        temb: torch.Tensor,
        ctx: AttentionContext,
        scale: float,
        on: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """``(base, control, base skips, control skips)``; with ``on`` false only the base branch runs."""
        base_states, ctrl_states = [], []
        for i in range(2):
            if on:
                h_ctrl = torch.cat([h_ctrl, self.base_to_ctrl[i](h_base)], dim=1)
            h_base = self.base_resnets[i](h_base, temb)
            if self.base_attentions is not None:
                h_base = ctx(self.base_attentions[i], h_base)
            if on:
                h_ctrl = self.ctrl_resnets[i](h_ctrl, temb)
                if self.ctrl_attentions is not None:
                    h_ctrl = ctx(self.ctrl_attentions[i], h_ctrl)
                h_base = h_base + self.ctrl_to_base[i](h_ctrl) * scale
            base_states.append(h_base)
            ctrl_states.append(h_ctrl)
        if self.base_downsamplers is not None and self.ctrl_downsamplers is not None:
            if on:
                h_ctrl = torch.cat([h_ctrl, self.base_to_ctrl[-1](h_base)], dim=1)
            h_base = self.base_downsamplers(h_base)
            if on:
                h_ctrl = self.ctrl_downsamplers(h_ctrl)
                h_base = h_base + self.ctrl_to_base[-1](h_ctrl) * scale
            base_states.append(h_base)
            ctrl_states.append(h_ctrl)
        return h_base, h_ctrl, base_states, ctrl_states


class ControlNetXSCrossAttnMidBlock2D(nn.Module):
    """The UNet mid block (``base_midblock``) beside its control part (``ctrl_midblock``)."""

    def __init__(
        self,
        base: int,
        ctrl: int,
        temb: int,
        norm_num_groups: int,
        ctrl_max_groups: int,
        heads: tuple[int, int],
        attn: _Attn,
        transformer_layers: int,
    ) -> None:
        super().__init__()
        self.base_to_ctrl = zero_conv(base)
        options = BlockOptions(
            num_layers=1,
            temb_channels=temb,
            resnet_groups=norm_num_groups,
            num_attention_heads=heads[0],
            cross_attention_dim=attn.cross_dim,
            transformer_layers_per_block=transformer_layers,
            use_linear_projection=attn.linear,
            upcast_attention=attn.upcast,
        )
        self.base_midblock = UNetMidBlock2DCrossAttn(base, options)
        self.ctrl_midblock = _ctrl_mid(base, ctrl, temb, ctrl_max_groups, heads[1], attn)
        self.ctrl_to_base = zero_conv(ctrl, base)

    def forward(
        self,
        h_base: torch.Tensor,
        h_ctrl: torch.Tensor,
        temb: torch.Tensor,
        ctx: AttentionContext,
        scale: float,
        on: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        args = {
            "encoder_hidden_states": ctx.encoder_hidden_states,
            "attention_mask": ctx.attention_mask,
            "cross_attention_kwargs": ctx.cross_attention_kwargs,
            "encoder_attention_mask": ctx.encoder_attention_mask,
        }
        if on:
            h_ctrl = torch.cat([h_ctrl, self.base_to_ctrl(h_base)], dim=1)
        h_base = self.base_midblock(h_base, temb, **args)
        if on:
            h_ctrl = self.ctrl_midblock(h_ctrl, temb, **args)
            h_base = h_base + self.ctrl_to_base(h_ctrl) * scale
        return h_base, h_ctrl


class ControlNetXSCrossAttnUpBlock2D(nn.Module):
    """A UNet up block (``resnets``, ``attentions``, ``upsamplers``) that also adds the control skips
    (``ctrl_to_base``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        prev_output_channel: int,
        ctrl_skip_channels: Sequence[int],
        temb: int,
        norm_num_groups: int,
        heads: int,
        attn: _Attn | None,
        add_upsample: bool,
    ) -> None:
        super().__init__()
        o = BlockOptions(temb_channels=temb, resnet_groups=norm_num_groups)
        resnets, attentions, c2b = [], [], []
        for i in range(3):
            skip = in_channels if i == 2 else out_channels
            res_in = prev_output_channel if i == 0 else out_channels
            c2b.append(zero_conv(ctrl_skip_channels[i], res_in))
            resnets.append(o.resnet(res_in + skip, out_channels))
            if attn is not None:
                a = attn
                attentions.append(
                    _transformer(heads, out_channels, a.layers, a.cross_dim, norm_num_groups, a.linear, a.upcast)
                )
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions) if attn is not None else None
        self.ctrl_to_base = nn.ModuleList(c2b)
        self.upsamplers = Upsample2D(out_channels, use_conv=True, out_channels=out_channels) if add_upsample else None

    def forward(
        self,
        h: torch.Tensor,
        base_skips: Sequence[torch.Tensor],
        ctrl_skips: Sequence[torch.Tensor],
        temb: torch.Tensor,
        ctx: AttentionContext,
        scale: float,
        on: bool,
    ) -> torch.Tensor:
        for i, (resnet, c2b) in enumerate(zip(self.resnets, self.ctrl_to_base, strict=True)):
            if on:
                h = h + c2b(ctrl_skips[-1 - i]) * scale
            h = resnet(torch.cat([h, base_skips[-1 - i]], dim=1), temb)
            if self.attentions is not None:
                h = ctx(self.attentions[i], h)
        if self.upsamplers is not None:
            h = self.upsamplers(h)
        return h


#: UNet2DConditionModel / ControlNetXSAdapter state-dict names -> UNetControlNetXSModel's
_FROM_UNET = (
    (r"^(time_embedding|conv_in|conv_norm_out|conv_out|add_embedding)\.", r"base_\1."),
    (r"^down_blocks\.(\d+)\.resnets\.", r"down_blocks.\1.base_resnets."),
    (r"^down_blocks\.(\d+)\.attentions\.", r"down_blocks.\1.base_attentions."),
    (r"^down_blocks\.(\d+)\.downsamplers\.0\.", r"down_blocks.\1.base_downsamplers."),
    (r"^mid_block\.", r"mid_block.base_midblock."),
    (r"^up_blocks\.(\d+)\.upsamplers\.0\.", r"up_blocks.\1.upsamplers."),
)
_FROM_ADAPTER = (
    (r"^conv_in\.", r"ctrl_conv_in."),
    (r"^time_embedding\.", r"ctrl_time_embedding."),
    (r"^down_blocks\.(\d+)\.resnets\.", r"down_blocks.\1.ctrl_resnets."),
    (r"^down_blocks\.(\d+)\.attentions\.", r"down_blocks.\1.ctrl_attentions."),
    (r"^down_blocks\.(\d+)\.downsamplers\.", r"down_blocks.\1.ctrl_downsamplers."),
    (r"^mid_block\.midblock\.", r"mid_block.ctrl_midblock."),
    (r"^up_connections\.", r"up_blocks."),
)


def _renamed(state: dict[str, torch.Tensor], rules: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            new = re.sub(pattern, repl, key)
            if new != key:
                key = new
                break
        out[key] = value
    return out


class UNetControlNetXSModel(ModelMixin, AttentionProcessorMixin):
    """A UNet fused with a ControlNet-XS adapter (Diffusers' ``UNetControlNetXSModel`` format).

    The UNet's config keys are Diffusers' ``UNet2DConditionModel`` ones (``num_attention_heads``
    is what SD configs call ``attention_head_dim``); the control branch's are prefixed ``ctrl_``.
    Only SD (``addition_embed_type=None``) and SDXL (``"text_time"``) UNets are supported.

    :raises ValueError: for ``time_embedding_mix`` outside ``[0, 1]`` (or below 1 without
        ``ctrl_learn_time_embedding``) or another ``addition_embed_type``.
    """

    _no_split_modules = ("ControlNetXSCrossAttnDownBlock2D", "ControlNetXSCrossAttnUpBlock2D")

    def __init__(
        self,
        sample_size: int | None = 96,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        norm_num_groups: int | None = 32,
        cross_attention_dim: int | tuple[int, ...] = 1024,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        num_attention_heads: int | tuple[int, ...] = 8,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        upcast_attention: bool = True,
        use_linear_projection: bool = True,
        time_cond_proj_dim: int | None = None,
        projection_class_embeddings_input_dim: int | None = None,
        time_embedding_mix: float = 1.0,
        ctrl_conditioning_channels: int = 3,
        ctrl_conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        ctrl_conditioning_channel_order: str = "rgb",
        ctrl_learn_time_embedding: bool = False,
        ctrl_block_out_channels: tuple[int, ...] = (4, 8, 16, 16),
        ctrl_num_attention_heads: int | tuple[int, ...] = 4,
        ctrl_max_norm_num_groups: int = 32,
    ) -> None:
        super().__init__()
        name = "UNetControlNetXSModel"
        if not 0.0 <= time_embedding_mix <= 1.0:
            raise ValueError(f"{name}: time_embedding_mix must be in [0, 1], got {time_embedding_mix}")
        if time_embedding_mix < 1 and not ctrl_learn_time_embedding:
            raise ValueError(f"{name}: time_embedding_mix < 1 needs ctrl_learn_time_embedding=True")
        if addition_embed_type not in (None, "text_time"):
            raise ValueError(
                f"{name} supports SD and SDXL UNets only: addition_embed_type must be None or 'text_time', "
                f"got {addition_embed_type!r}"
            )
        n = len(down_block_types)
        if len(block_out_channels) != n or len(ctrl_block_out_channels) != n or len(up_block_types) != n:
            raise ValueError(
                f"{name}: block_out_channels, ctrl_block_out_channels and up_block_types need one entry per down "
                f"block ({n})"
            )
        if addition_embed_type == "text_time" and (
            addition_time_embed_dim is None or projection_class_embeddings_input_dim is None
        ):
            raise ValueError(
                f"{name}: addition_embed_type='text_time' needs addition_time_embed_dim and "
                "projection_class_embeddings_input_dim"
            )
        groups = norm_num_groups if norm_num_groups is not None else 32
        layers = _per_block(transformer_layers_per_block, n, "transformer_layers_per_block", name)
        cross = _per_block(cross_attention_dim, n, "cross_attention_dim", name)
        heads = _per_block(num_attention_heads, n, "num_attention_heads", name)
        ctrl_heads = _per_block(ctrl_num_attention_heads, n, "ctrl_num_attention_heads", name)
        ctrl = ctrl_block_out_channels
        self.in_channels = 4

        self.base_conv_in = nn.Conv2d(4, block_out_channels[0], kernel_size=3, padding=1)
        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=ctrl[0],
            block_out_channels=ctrl_conditioning_embedding_out_channels,
            conditioning_channels=ctrl_conditioning_channels,
        )
        self.ctrl_conv_in = nn.Conv2d(4, ctrl[0], kernel_size=3, padding=1)
        self.control_to_base_for_conv_in = zero_conv(ctrl[0], block_out_channels[0])
        temb = block_out_channels[0] * 4
        self.base_time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.base_time_embedding = TimestepEmbedding(block_out_channels[0], temb, cond_proj_dim=time_cond_proj_dim)
        self.ctrl_time_embedding = TimestepEmbedding(block_out_channels[0], temb) if ctrl_learn_time_embedding else None
        self.base_add_time_proj: Timesteps | None = None
        self.base_add_embedding: TimestepEmbedding | None = None
        if addition_embed_type is not None:
            self.base_add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)  # type: ignore[arg-type]
            self.base_add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, temb)  # type: ignore[arg-type]

        down = []
        for i, block_type in enumerate(down_block_types):
            attn = (
                _Attn(cross[i], layers[i], use_linear_projection, upcast_attention)
                if "CrossAttn" in block_type
                else None
            )
            down.append(
                ControlNetXSCrossAttnDownBlock2D(
                    (block_out_channels[max(i - 1, 0)], block_out_channels[i]),
                    (ctrl[max(i - 1, 0)], ctrl[i]),
                    temb,
                    groups,
                    ctrl_max_norm_num_groups,
                    (heads[i], ctrl_heads[i]),
                    attn,
                    add_downsample=i < n - 1,
                )
            )
        self.down_blocks = nn.ModuleList(down)
        self.mid_block = ControlNetXSCrossAttnMidBlock2D(
            block_out_channels[-1],
            ctrl[-1],
            temb,
            groups,
            ctrl_max_norm_num_groups,
            (heads[-1], ctrl_heads[-1]),
            _Attn(cross[-1], layers[-1], use_linear_projection, upcast_attention),
            layers[-1],
        )
        skips = _skip_widths(ctrl)
        widths = list(reversed(block_out_channels))
        up = []
        for i, block_type in enumerate(up_block_types):
            j = n - 1 - i
            attn = (
                _Attn(cross[j], layers[j], use_linear_projection, upcast_attention)
                if "CrossAttn" in block_type
                else None
            )
            up.append(
                ControlNetXSCrossAttnUpBlock2D(
                    in_channels=widths[min(i + 1, n - 1)],
                    out_channels=widths[i],
                    prev_output_channel=widths[max(i - 1, 0)],
                    ctrl_skip_channels=[skips.pop() for _ in range(3)],
                    temb=temb,
                    norm_num_groups=groups,
                    heads=heads[j],
                    attn=attn,
                    add_upsample=i < n - 1,
                )
            )
        self.up_blocks = nn.ModuleList(up)
        self.base_conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=groups)
        self.base_conv_act = nn.SiLU()
        self.base_conv_out = nn.Conv2d(block_out_channels[0], 4, kernel_size=3, padding=1)

    @property
    def add_embedding(self) -> TimestepEmbedding | None:
        """The SDXL added-conditioning embedding (``base_add_embedding``), under the UNet's name."""
        return self.base_add_embedding

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        controlnet: ControlNetXSAdapter | None = None,
        size_ratio: float | None = None,
        ctrl_block_out_channels: Sequence[int] | None = None,
        time_embedding_mix: float | None = None,
        ctrl_optional_kwargs: dict[str, Any] | None = None,
    ) -> UNetControlNetXSModel:
        """Fuse ``unet`` with ``controlnet`` (or a fresh adapter of ``size_ratio`` / ``ctrl_block_out_channels``).

        The weights are copies of both models' (renamed to the fused layout).

        :raises ValueError: when ``controlnet`` comes with sizing arguments, or when the UNet has
            parts ControlNet-XS does not support (class embeddings, other added embeddings).
        """
        if controlnet is None:
            controlnet = ControlNetXSAdapter.from_unet(
                unet, size_ratio, ctrl_block_out_channels, **(ctrl_optional_kwargs or {})
            )
        elif any(
            o is not None for o in (size_ratio, ctrl_block_out_channels, time_embedding_mix, ctrl_optional_kwargs)
        ):
            raise ValueError(
                "UNetControlNetXSModel.from_unet: with a controlnet, pass none of size_ratio, ctrl_block_out_channels, "
                "time_embedding_mix, ctrl_optional_kwargs (the adapter's config already says them)"
            )
        c, a = unet.config, controlnet.config
        keys = (
            "sample_size",
            "down_block_types",
            "up_block_types",
            "block_out_channels",
            "norm_num_groups",
            "cross_attention_dim",
            "transformer_layers_per_block",
            "addition_embed_type",
            "addition_time_embed_dim",
            "upcast_attention",
            "use_linear_projection",
            "time_cond_proj_dim",
            "projection_class_embeddings_input_dim",
        )
        config: dict[str, Any] = {k: c[k] for k in keys if k in c}
        config["num_attention_heads"] = c.attention_head_dim
        for k in (
            "conditioning_channels",
            "conditioning_embedding_out_channels",
            "conditioning_channel_order",
            "learn_time_embedding",
            "block_out_channels",
            "num_attention_heads",
            "max_norm_num_groups",
        ):
            config[f"ctrl_{k}"] = a[k]
        config["time_embedding_mix"] = a.time_embedding_mix
        model = cls.from_config(config)
        state = {
            **_renamed(unet.state_dict(), _FROM_UNET),
            **_renamed(controlnet.state_dict(), _FROM_ADAPTER),
        }
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                "UNetControlNetXSModel.from_unet: the UNet and adapter do not fit a ControlNet-XS layout (SD / SDXL "
                f"UNets only); missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        return model.to(unet.dtype)

    def _condition(self, controlnet_cond: torch.Tensor) -> torch.Tensor:
        """The embedded condition image; the last one is reused while the same unchanged tensor comes back
        without autograd (a pipeline passes one condition tensor every step: its embedding never changes)."""
        weights = tuple((p._version, p.data_ptr(), p.dtype) for p in self.controlnet_cond_embedding.parameters())
        key = (id(controlnet_cond), controlnet_cond._version, weights)
        cached = self.__dict__.get("_cond_cache")
        if cached is not None and cached[0] == key and cached[1] is controlnet_cond and not torch.is_grad_enabled():
            hint: torch.Tensor = cached[2]
            return hint
        cond = controlnet_cond
        if self.config.ctrl_conditioning_channel_order == "bgr":
            cond = torch.flip(cond, dims=[1])
        hint = self.controlnet_cond_embedding(cond)
        self.__dict__["_cond_cache"] = None if torch.is_grad_enabled() else (key, controlnet_cond, hint)
        return hint

    def forget_condition(self) -> None:
        """Drop the reused condition embedding (pipelines call this at the end of a run)."""
        self.__dict__.pop("_cond_cache", None)

    def _time_embedding(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        timestep_cond: torch.Tensor | None,
        added_cond_kwargs: dict[str, torch.Tensor] | None,
        on: bool,
    ) -> torch.Tensor:
        t_emb = self.base_time_proj(timesteps_tensor(timestep, sample)).to(dtype=sample.dtype)
        if self.ctrl_time_embedding is not None and on:
            mix = self.config.time_embedding_mix**0.3
            ctrl = self.ctrl_time_embedding(t_emb, timestep_cond)
            temb: torch.Tensor = ctrl * mix + self.base_time_embedding(t_emb, timestep_cond) * (1 - mix)
        else:
            temb = self.base_time_embedding(t_emb)
        if self.base_add_embedding is not None and self.base_add_time_proj is not None:
            extra = added_cond_kwargs or {}
            missing = [k for k in ("text_embeds", "time_ids") if k not in extra]
            if missing:
                raise ValueError(
                    "UNetControlNetXSModel: this model has addition_embed_type='text_time' (SDXL); pass "
                    f"{' and '.join(missing)} in added_cond_kwargs"
                )
            text = extra["text_embeds"]
            time_embeds = self.base_add_time_proj(extra["time_ids"].flatten()).reshape(text.shape[0], -1)
            temb = temb + self.base_add_embedding(torch.cat([text, time_embeds], dim=-1).to(temb.dtype))
        return temb

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = True,
        apply_control: bool = True,
    ) -> ControlNetXSOutput | tuple[torch.Tensor]:
        """Predict the noise of ``sample`` ``(batch, 4, h, w)`` at ``timestep``, steered by ``controlnet_cond``.

        :param encoder_hidden_states: ``(batch, seq, cross_attention_dim)`` text embeddings.
        :param controlnet_cond: the condition image ``(batch, ctrl_conditioning_channels, H, W)`` in
            ``[0, 1]`` with ``H = h * 2**(len(ctrl_conditioning_embedding_out_channels) - 1)``
            (8x the latents for the published layout); ``bgr`` models flip the channels.
        :param conditioning_scale: multiplies every control-to-base connection.
        :param apply_control: ``False`` runs the plain UNet (the control branch is skipped).
        :param attention_mask: ``(batch, seq)`` over the encoder states, 1 keep, 0 discard.
        :param class_labels: not used (accepted for the pipelines' common UNet call).
        :returns: :class:`ControlNetXSOutput` (or ``(sample,)``).
        :raises ValueError: when ``apply_control`` is on without ``controlnet_cond``, or SDXL
            conditioning is missing.
        """
        on = bool(apply_control)
        if on and controlnet_cond is None:
            raise ValueError("UNetControlNetXSModel: apply_control=True needs controlnet_cond (the condition image)")
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        temb = self._time_embedding(sample, timestep, timestep_cond, added_cond_kwargs, on)
        ctx = AttentionContext(encoder_hidden_states, attention_mask, cross_attention_kwargs)
        h_base = self.base_conv_in(sample)
        h_ctrl = h_base
        if on and controlnet_cond is not None:
            h_ctrl = self.ctrl_conv_in(sample) + self._condition(controlnet_cond)
            h_base = h_base + self.control_to_base_for_conv_in(h_ctrl) * conditioning_scale
        base_skips, ctrl_skips = [h_base], [h_ctrl]
        for down in self.down_blocks:
            h_base, h_ctrl, b, c = down(h_base, h_ctrl, temb, ctx, conditioning_scale, on)
            base_skips += b
            ctrl_skips += c
        h_base, h_ctrl = self.mid_block(h_base, h_ctrl, temb, ctx, conditioning_scale, on)
        for up in self.up_blocks:
            k = len(up.resnets)  # type: ignore[arg-type]
            h_base = up(h_base, base_skips[-k:], ctrl_skips[-k:], temb, ctx, conditioning_scale, on)
            base_skips, ctrl_skips = base_skips[:-k], ctrl_skips[:-k]
        out = self.base_conv_out(self.base_conv_act(self.base_conv_norm_out(h_base)))
        if not return_dict:
            return (out,)
        return ControlNetXSOutput(sample=out)
