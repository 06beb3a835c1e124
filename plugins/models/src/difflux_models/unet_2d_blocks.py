"""Down, mid and up blocks of the 2-d UNets and the VAE, keyed by Diffusers' block type strings.

A block is residual blocks (``resnets.N``), optionally each followed by an attention layer
(``attentions.N``: a spatial transformer for cross-attention blocks, a plain self-attention for
``Attn*`` blocks), then an optional resampler (``downsamplers.0`` / ``upsamplers.0``). One class
per family holds that structure; the Diffusers names are thin subclasses that pick the attention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .layers.activations import activate_fresh, get_activation
from .layers.attention import Attention
from .layers.resnet import ResnetBlock2D, ResnetBlockCondNorm2D
from .layers.sampling import Downsample2D, Upsample2D
from .layers.transformer_2d import SpatialTransformer2D

__all__ = [
    "AttentionContext",
    "AttnDownBlock2D",
    "AttnDownEncoderBlock2D",
    "AttnUpBlock2D",
    "AttnUpDecoderBlock2D",
    "BlockOptions",
    "CrossAttnDownBlock2D",
    "CrossAttnUpBlock2D",
    "DownBlock2D",
    "DownEncoderBlock2D",
    "OutputHeadMixin",
    "ResnetDownsampleBlock2D",
    "ResnetUpsampleBlock2D",
    "SimpleCrossAttnDownBlock2D",
    "SimpleCrossAttnUpBlock2D",
    "UNetMidBlock2D",
    "UNetMidBlock2DCrossAttn",
    "UNetMidBlock2DSimpleCrossAttn",
    "UpBlock2D",
    "UpDecoderBlock2D",
    "build_down_blocks",
    "build_up_blocks",
    "get_down_block",
    "get_mid_block",
    "get_up_block",
]

AttentionFactory = Callable[[int, int], nn.Module]  # (layer index, channels) -> attention module


@dataclasses.dataclass
class BlockOptions:
    """The settings a UNet passes to every block it builds (per-block values already picked)."""

    num_layers: int = 1
    temb_channels: int | None = None
    dropout: float = 0.0
    resnet_eps: float = 1e-6
    resnet_act_fn: str = "swish"
    resnet_groups: int = 32
    resnet_time_scale_shift: str = "default"
    output_scale_factor: float = 1.0
    downsample_padding: int = 1
    # attention
    attention_head_dim: int | None = None
    num_attention_heads: int = 1
    cross_attention_dim: int | None = None
    transformer_layers_per_block: int | tuple[int, ...] = 1
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    upcast_attention: bool = False
    #: ``"default"``, or GLIGEN's ``"gated"`` / ``"gated-text-image"`` (the transformer blocks get a ``fuser``)
    attention_type: str = "default"
    attn_groups: int | None = None
    skip_time_act: bool = False
    #: what ``resnet_skip_time_act`` / ``resnet_out_scale_factor`` set in the blocks that read them
    #: (``ResnetDownsampleBlock2D``, ``ResnetUpsampleBlock2D``, the simple-cross-attention blocks)
    resnet_skip_time_act: bool = False
    resnet_out_scale_factor: float = 1.0
    cross_attention_norm: str | None = None

    def with_resnet_options(self) -> BlockOptions:
        """These options with ``resnet_skip_time_act`` and ``resnet_out_scale_factor`` in effect."""
        return dataclasses.replace(
            self, skip_time_act=self.resnet_skip_time_act, output_scale_factor=self.resnet_out_scale_factor
        )

    def resnet(self, in_channels: int, out_channels: int, **extra: Any) -> nn.Module:
        """A residual block; with ``resnet_time_scale_shift="spatial"`` (MoVQ decoders) one whose
        norms are :class:`~difflux_models.layers.normalization.SpatialNorm` of ``temb`` (the quantized latent)."""
        common: dict[str, Any] = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "temb_channels": self.temb_channels,
            "eps": self.resnet_eps,
            "groups": self.resnet_groups,
            "dropout": self.dropout,
            "time_embedding_norm": self.resnet_time_scale_shift,
            "non_linearity": self.resnet_act_fn,
            "output_scale_factor": self.output_scale_factor,
            **extra,
        }
        if self.resnet_time_scale_shift == "spatial":
            if self.temb_channels is None:
                raise ValueError("spatial-norm residual blocks need temb_channels (the latent channels)")
            return ResnetBlockCondNorm2D(**common)
        return ResnetBlock2D(skip_time_act=self.skip_time_act, **common)

    def layers_per_attention(self, i: int) -> int:
        t = self.transformer_layers_per_block
        return t if isinstance(t, int) else t[i]

    def cross_attention(self) -> AttentionFactory:
        heads = self.num_attention_heads

        def make(i: int, channels: int) -> nn.Module:
            return SpatialTransformer2D(
                heads,
                channels // heads,
                in_channels=channels,
                num_layers=self.layers_per_attention(i),
                cross_attention_dim=self.cross_attention_dim,
                norm_num_groups=self.resnet_groups,
                use_linear_projection=self.use_linear_projection,
                only_cross_attention=self.only_cross_attention,
                upcast_attention=self.upcast_attention,
                attention_type=self.attention_type,
            )

        return make

    def added_kv_attention(self) -> AttentionFactory:
        """Attention whose keys and values add the encoder states' own projections (``add_k_proj``,
        ``add_v_proj``) to the feature map's: the simple-cross-attention blocks of unCLIP / IF / Kandinsky."""

        def make(i: int, channels: int) -> nn.Module:
            return self._attention(
                channels,
                self.resnet_groups,
                cross_attention_dim=channels,
                added_kv_proj_dim=self.cross_attention_dim,
                only_cross_attention=self.only_cross_attention,
                cross_attention_norm=self.cross_attention_norm,
            )

        return make

    def self_attention(self, groups: int | str | None = "resnet") -> AttentionFactory:
        """Self-attention layers; ``groups``: their GroupNorm groups (``"resnet"``: ``resnet_groups``,
        ``None``: no norm)."""
        norm_groups = self.resnet_groups if groups == "resnet" else groups
        if not (norm_groups is None or isinstance(norm_groups, int)):
            raise RuntimeError(
                "BlockOptions.self_attention: internal check failed: "
                "norm_groups is None or isinstance(norm_groups, int)"
            )
        spatial = self.resnet_time_scale_shift == "spatial"  # MoVQ: a spatial norm of temb instead
        if spatial:
            norm_groups = None

        def make(i: int, channels: int) -> nn.Module:
            return self._attention(
                channels,
                norm_groups,
                rescale_output_factor=self.output_scale_factor,
                eps=self.resnet_eps,
                residual_connection=True,
                spatial_norm_dim=self.temb_channels if spatial else None,
            )

        return make

    def _attention(self, channels: int, norm_groups: int | None, **extra: Any) -> Attention:
        """An :class:`Attention` over ``channels`` in heads of ``attention_head_dim`` (one head when unset),
        with biases and an fp32 softmax: the settings of the UNet blocks' non-transformer attentions."""
        head_dim = self.attention_head_dim if self.attention_head_dim is not None else channels
        return Attention(
            channels,
            heads=channels // head_dim,
            dim_head=head_dim,
            norm_num_groups=norm_groups,
            bias=True,
            upcast_softmax=True,
            **extra,
        )


@dataclasses.dataclass(frozen=True)
class AttentionContext:
    """What a block's attention layers read besides the hidden states; ``ctx(attn, h)`` runs one.

    A spatial transformer gets all of it; a plain self-attention layer only the cross-attention
    keyword arguments.
    """

    encoder_hidden_states: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    cross_attention_kwargs: dict[str, Any] | None = None
    encoder_attention_mask: torch.Tensor | None = None

    def __call__(self, attn: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor
        if isinstance(attn, SpatialTransformer2D):
            out = attn(
                hidden_states,
                encoder_hidden_states=self.encoder_hidden_states,
                cross_attention_kwargs=self.cross_attention_kwargs,
                attention_mask=self.attention_mask,
                encoder_attention_mask=self.encoder_attention_mask,
            )
        elif getattr(attn, "added_kv_proj_dim", None) is not None:
            # simple cross-attention: one mask, the self-attention one when given (Diffusers' unCLIP convention)
            mask = self.attention_mask
            if mask is None and self.encoder_hidden_states is not None:
                mask = self.encoder_attention_mask
            out = attn(
                hidden_states,
                encoder_hidden_states=self.encoder_hidden_states,
                attention_mask=mask,
                **(self.cross_attention_kwargs or {}),
            )
        else:
            out = attn(hidden_states, **(self.cross_attention_kwargs or {}))
        return out


def build_down_blocks(
    block_types: Sequence[str],
    block_out_channels: Sequence[int],
    options: Callable[[int, int], BlockOptions],
    **extra: Any,
) -> nn.ModuleList:
    """One down block per type, each taking its predecessor's channels (the first, ``conv_in``'s);
    all but the last downsample. ``options(i, out_channels)`` gives block ``i``'s options;
    ``extra`` goes to :func:`get_down_block`."""
    last = len(block_out_channels) - 1
    ins = [block_out_channels[0], *block_out_channels[:-1]]
    return nn.ModuleList(
        get_down_block(
            block_type,
            in_channels=ins[i],
            out_channels=block_out_channels[i],
            add_downsample=i < last,
            options=options(i, block_out_channels[i]),
            **extra,
        )
        for i, block_type in enumerate(block_types)
    )


def build_up_blocks(
    block_types: Sequence[str],
    block_out_channels: Sequence[int],
    options: Callable[[int, int], BlockOptions],
    *,
    skip_connections: bool = True,
    **extra: Any,
) -> nn.ModuleList:
    """One up block per type, over the channels reversed; all but the last upsample.

    With ``skip_connections`` (UNets) block ``i`` takes the previous block's output and skip
    states as wide as the next-deeper level; without (the VAE decoder) only the previous output.
    ``options(i, out_channels)`` gives block ``i``'s options; ``extra`` goes to :func:`get_up_block`.
    """
    rev = list(reversed(block_out_channels))
    last = len(rev) - 1
    blocks = nn.ModuleList()
    for i, block_type in enumerate(block_types):
        prev, out = rev[max(i - 1, 0)], rev[i]
        blocks.append(
            get_up_block(
                block_type,
                in_channels=rev[min(i + 1, last)] if skip_connections else prev,
                prev_output_channel=prev,
                out_channels=out,
                add_upsample=i < last,
                options=options(i, out),
                **extra,
            )
        )
    return blocks


class OutputHeadMixin:
    """``conv_norm_out``, ``conv_act``, ``conv_out``: how the UNets and the VAE's coders end."""

    conv_norm_out: nn.Module | None  # a GroupNorm (a SpatialNorm in MoVQ decoders, which run their own head)
    conv_act: nn.Module | None
    conv_out: nn.Conv2d

    def _init_output_head(
        self, channels: int, out_channels: int, *, groups: int | None, eps: float, act_fn: str, kernel_size: int = 3
    ) -> None:
        """``groups=None``: no norm and activation, only ``conv_out`` (K-diffusion UNets)."""
        self.conv_norm_out = None if groups is None else nn.GroupNorm(num_channels=channels, num_groups=groups, eps=eps)
        self.conv_act = None if groups is None else get_activation(act_fn)
        self.conv_out = nn.Conv2d(channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2)

    def _output_head(self, sample: torch.Tensor) -> torch.Tensor:
        if self.conv_norm_out is not None and self.conv_act is not None:
            sample = activate_fresh(self.conv_act, self.conv_norm_out(sample), self.conv_norm_out)
        out: torch.Tensor = self.conv_out(sample)
        return out


def _identity(i: int, channels: int) -> nn.Module:
    """A placeholder attention (mid blocks built without attention)."""
    return nn.Identity()


def _interleaved_layers(
    block: nn.Module,
    resnet: Callable[[int], nn.Module],
    num_layers: int,
    attention: AttentionFactory | None,
    channels: int,
    *,
    mid: bool = False,
) -> None:
    """Build the block's layers and register them in Diffusers' order, so a seeded model gets
    Diffusers' initial weights and state-dict order.

    Down / up blocks build ``resnet(i)`` then ``attention(i, channels)`` for each layer; a ``mid``
    block builds ``resnet(0)``, then ``attention(i, channels)``, ``resnet(i + 1)`` for each layer.
    Either way the attentions are registered (as ``attentions``) before the resnets (``resnets``).
    """
    resnets: list[nn.Module] = [resnet(0)] if mid else []
    attentions: list[nn.Module] = []
    for i in range(num_layers):
        if not mid:
            resnets.append(resnet(i))
        if attention is not None:
            attentions.append(attention(i, channels))
        if mid:
            resnets.append(resnet(i + 1))
    if attention is not None:
        block.attentions = nn.ModuleList(attentions)
    block.resnets = nn.ModuleList(resnets)


# -- down blocks -----------------------------------------------------------------------------


class DownBlock2D(nn.Module):
    """Residual blocks, optional attentions, optional downsampler; returns ``(hidden, skip states)``."""

    resnets: nn.ModuleList
    has_cross_attention = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        options: BlockOptions,
        add_downsample: bool = True,
        downsample_type: str | None = "conv",
        attention: AttentionFactory | None = None,
    ) -> None:
        super().__init__()
        o = options
        _interleaved_layers(
            self,
            lambda i: o.resnet(in_channels if i == 0 else out_channels, out_channels),
            o.num_layers,
            attention,
            out_channels,
        )
        self.downsample_type = downsample_type if add_downsample else None
        self.downsamplers: nn.ModuleList | None = None
        if self.downsample_type == "conv":
            self.downsamplers = nn.ModuleList(
                [
                    Downsample2D(
                        out_channels, use_conv=True, out_channels=out_channels, padding=o.downsample_padding, name="op"
                    )
                ]
            )
        elif self.downsample_type == "resnet":
            self.downsamplers = nn.ModuleList([o.resnet(out_channels, out_channels, down=True)])
        elif self.downsample_type is not None:
            raise ValueError(f"unknown downsample_type {downsample_type!r}; expected 'conv' or 'resnet'")

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        additional_residuals: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        states: tuple[torch.Tensor, ...] = ()
        attentions = getattr(self, "attentions", None)
        ctx = AttentionContext(encoder_hidden_states, attention_mask, cross_attention_kwargs, encoder_attention_mask)
        last = len(self.resnets) - 1
        for i, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states, temb)
            if attentions is not None:
                hidden_states = ctx(attentions[i], hidden_states)
            if i == last and additional_residuals is not None:
                hidden_states = hidden_states + additional_residuals
            states += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states, temb) if self.downsample_type == "resnet" else down(hidden_states)
            states += (hidden_states,)
        return hidden_states, states


class CrossAttnDownBlock2D(DownBlock2D):
    """Down block with a spatial transformer (cross-attention) after each residual block."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions, add_downsample: bool = True) -> None:
        super().__init__(in_channels, out_channels, options, add_downsample, attention=options.cross_attention())


class AttnDownBlock2D(DownBlock2D):
    """Down block with a self-attention layer after each residual block (DDPM / LDM UNets)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        options: BlockOptions,
        add_downsample: bool = True,
        downsample_type: str | None = "conv",
    ) -> None:
        super().__init__(
            in_channels, out_channels, options, add_downsample, downsample_type, attention=options.self_attention()
        )


class ResnetDownsampleBlock2D(DownBlock2D):
    """Down block whose downsampler is a residual block with ``down=True`` (consistency models,
    unCLIP / IF UNets)."""

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions, add_downsample: bool = True) -> None:
        super().__init__(in_channels, out_channels, options, add_downsample, downsample_type="resnet")


class SimpleCrossAttnDownBlock2D(DownBlock2D):
    """Down block with added-key/value attention (:class:`~difflux_models.layers.attention.AttnAddedKVProcessor`)
    after each residual block and a residual-block downsampler (unCLIP, DeepFloyd IF, Kandinsky 2.x)."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions, add_downsample: bool = True) -> None:
        o = options.with_resnet_options()
        super().__init__(in_channels, out_channels, o, add_downsample, "resnet", attention=o.added_kv_attention())


class DownEncoderBlock2D(DownBlock2D):
    """The VAE encoder's down block: no timestep embedding; returns the hidden states only."""

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, **_: Any) -> torch.Tensor:  # type: ignore[override]
        hidden_states, _states = super().forward(hidden_states, None)
        return hidden_states


class AttnDownEncoderBlock2D(DownEncoderBlock2D):
    """The VAE encoder's down block with a self-attention layer after each residual block (MoVQ)."""

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions, add_downsample: bool = True) -> None:
        DownBlock2D.__init__(
            self, in_channels, out_channels, options, add_downsample, attention=options.self_attention()
        )


# -- mid blocks ------------------------------------------------------------------------------


class UNetMidBlock2D(nn.Module):
    """Residual block, then ``num_layers`` x (optional self-attention, residual block)."""

    resnets: nn.ModuleList
    attentions: nn.ModuleList
    has_cross_attention = False

    def __init__(self, in_channels: int, options: BlockOptions, add_attention: bool = True) -> None:
        super().__init__()
        o = options
        self.add_attention = add_attention
        attn_groups = o.attn_groups
        if attn_groups is None and o.resnet_time_scale_shift == "default":
            attn_groups = o.resnet_groups
        make = o.self_attention(attn_groups)
        attention = make if add_attention else _identity
        _interleaved_layers(
            self, lambda _: o.resnet(in_channels, in_channels), o.num_layers, attention, in_channels, mid=True
        )

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:], strict=True):
            if self.add_attention:
                hidden_states = attn(hidden_states, temb=temb)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


class UNetMidBlock2DCrossAttn(nn.Module):
    """Residual block, then ``num_layers`` x (spatial transformer, residual block)."""

    resnets: nn.ModuleList
    attentions: nn.ModuleList
    has_cross_attention = True

    def __init__(self, in_channels: int, options: BlockOptions) -> None:
        super().__init__()
        o = options
        _interleaved_layers(
            self, lambda _: o.resnet(in_channels, in_channels), o.num_layers, o.cross_attention(), in_channels, mid=True
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ctx = AttentionContext(encoder_hidden_states, attention_mask, cross_attention_kwargs, encoder_attention_mask)
        hidden_states = self.resnets[0](hidden_states, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:], strict=True):
            hidden_states = resnet(ctx(attn, hidden_states), temb)
        return hidden_states


class UNetMidBlock2DSimpleCrossAttn(UNetMidBlock2DCrossAttn):
    """Residual block, then ``num_layers`` x (added-key/value attention, residual block)."""

    def __init__(self, in_channels: int, options: BlockOptions) -> None:
        nn.Module.__init__(self)
        o = dataclasses.replace(options, skip_time_act=options.resnet_skip_time_act)
        _interleaved_layers(
            self,
            lambda _: o.resnet(in_channels, in_channels),
            o.num_layers,
            o.added_kv_attention(),
            in_channels,
            mid=True,
        )


# -- up blocks -------------------------------------------------------------------------------


class UpBlock2D(nn.Module):
    """Residual blocks fed the matching skip states, optional attentions, optional upsampler."""

    resnets: nn.ModuleList
    has_cross_attention = False
    #: whether the upsampler follows the ``upsample_size`` the UNet asks for
    follows_upsample_size = True

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int | None,
        out_channels: int,
        options: BlockOptions,
        add_upsample: bool = True,
        upsample_type: str | None = "conv",
        attention: AttentionFactory | None = None,
    ) -> None:
        super().__init__()
        o = options
        n = o.num_layers

        def resnet_in(i: int) -> int:
            if prev_output_channel is None:  # decoder blocks: no skip connections
                return in_channels if i == 0 else out_channels
            return (prev_output_channel if i == 0 else out_channels) + (in_channels if i == n - 1 else out_channels)

        _interleaved_layers(self, lambda i: o.resnet(resnet_in(i), out_channels), n, attention, out_channels)
        self.upsample_type = upsample_type if add_upsample else None
        self.upsamplers: nn.ModuleList | None = None
        if self.upsample_type == "conv":
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
        elif self.upsample_type == "resnet":
            self.upsamplers = nn.ModuleList([o.resnet(out_channels, out_channels, up=True)])
        elif self.upsample_type is not None:
            raise ValueError(f"unknown upsample_type {upsample_type!r}; expected 'conv' or 'resnet'")

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...] = (),
        temb: torch.Tensor | None = None,
        upsample_size: tuple[int, int] | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attentions = getattr(self, "attentions", None)
        ctx = AttentionContext(encoder_hidden_states, attention_mask, cross_attention_kwargs, encoder_attention_mask)
        skips = list(res_hidden_states_tuple)
        for i, resnet in enumerate(self.resnets):
            if skips:
                hidden_states = torch.cat([hidden_states, skips.pop()], dim=1)
            hidden_states = resnet(hidden_states, temb)
            if attentions is not None:
                hidden_states = ctx(attentions[i], hidden_states)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                if self.upsample_type == "resnet":
                    hidden_states = up(hidden_states, temb)
                else:
                    hidden_states = up(hidden_states, upsample_size if self.follows_upsample_size else None)
        return hidden_states


class _PresetUpBlock2D(UpBlock2D):
    """An up block whose class fixes the upsampler, the attention and the residual options: the
    constructor takes only the arguments all UNet up blocks take (the Diffusers names below)."""

    preset_upsample_type: ClassVar[str] = "conv"

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        options: BlockOptions,
        add_upsample: bool = True,
    ) -> None:
        o = self._preset_options(options)
        attention = self._preset_attention(o)
        super().__init__(
            in_channels, prev_output_channel, out_channels, o, add_upsample, self.preset_upsample_type, attention
        )

    def _preset_options(self, options: BlockOptions) -> BlockOptions:
        return options

    def _preset_attention(self, options: BlockOptions) -> AttentionFactory | None:
        return None


class CrossAttnUpBlock2D(_PresetUpBlock2D):
    """Up block with a spatial transformer (cross-attention) after each residual block."""

    has_cross_attention = True

    def _preset_attention(self, options: BlockOptions) -> AttentionFactory | None:
        return options.cross_attention()


class AttnUpBlock2D(UpBlock2D):
    """Up block with a self-attention layer after each residual block (DDPM / LDM UNets)."""

    follows_upsample_size = False  # Diffusers' attention up block always doubles the size

    def __init__(
        self,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        options: BlockOptions,
        add_upsample: bool = True,
        upsample_type: str | None = "conv",
    ) -> None:
        super().__init__(
            in_channels,
            prev_output_channel,
            out_channels,
            options,
            add_upsample,
            upsample_type,
            attention=options.self_attention(),
        )


class ResnetUpsampleBlock2D(_PresetUpBlock2D):
    """Up block whose upsampler is a residual block with ``up=True`` (consistency models, unCLIP / IF UNets)."""

    preset_upsample_type = "resnet"


class SimpleCrossAttnUpBlock2D(_PresetUpBlock2D):
    """Up block with added-key/value attention after each residual block and a residual-block
    upsampler (unCLIP, DeepFloyd IF, Kandinsky 2.x)."""

    has_cross_attention = True
    preset_upsample_type = "resnet"

    def _preset_options(self, options: BlockOptions) -> BlockOptions:
        return options.with_resnet_options()

    def _preset_attention(self, options: BlockOptions) -> AttentionFactory | None:
        return options.added_kv_attention()


class UpDecoderBlock2D(UpBlock2D):
    """The VAE decoder's up block: no skip connections, no timestep embedding by default."""

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions, add_upsample: bool = True) -> None:
        super().__init__(in_channels, None, out_channels, options, add_upsample)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, **_: Any) -> torch.Tensor:  # type: ignore[override]
        return super().forward(hidden_states, (), temb)


class AttnUpDecoderBlock2D(UpDecoderBlock2D):
    """The VAE decoder's up block with a self-attention layer after each residual block (MoVQ:
    spatial norms of the quantized latent ``temb`` in both)."""

    attentions: nn.ModuleList

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions, add_upsample: bool = True) -> None:
        UpBlock2D.__init__(
            self, in_channels, None, out_channels, options, add_upsample, attention=options.self_attention()
        )

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, **_: Any) -> torch.Tensor:  # type: ignore[override]
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            hidden_states = attn(resnet(hidden_states, temb), temb=temb)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states)
        return hidden_states


# -- registries ------------------------------------------------------------------------------


def get_down_block(
    block_type: str,
    *,
    in_channels: int,
    out_channels: int,
    add_downsample: bool,
    options: BlockOptions,
    downsample_type: str | None = None,
) -> nn.Module:
    """Build a down block by its Diffusers type name (``"CrossAttnDownBlock2D"`` …)."""
    block_type = block_type.removeprefix("UNetRes")
    _check_cross_attention(block_type, options)
    if block_type == "DownBlock2D":
        return DownBlock2D(in_channels, out_channels, options, add_downsample)
    if block_type == "CrossAttnDownBlock2D":
        return CrossAttnDownBlock2D(in_channels, out_channels, options, add_downsample)
    if block_type == "AttnDownBlock2D":
        return AttnDownBlock2D(in_channels, out_channels, options, add_downsample, downsample_type or "conv")
    if block_type == "DownEncoderBlock2D":
        return DownEncoderBlock2D(in_channels, out_channels, options, add_downsample)
    if block_type == "AttnDownEncoderBlock2D":
        return AttnDownEncoderBlock2D(in_channels, out_channels, options, add_downsample)
    if block_type == "SimpleCrossAttnDownBlock2D":
        return SimpleCrossAttnDownBlock2D(in_channels, out_channels, options, add_downsample)
    if block_type == "ResnetDownsampleBlock2D":
        return ResnetDownsampleBlock2D(in_channels, out_channels, options.with_resnet_options(), add_downsample)
    extra = _extra_block(block_type, "down")
    if extra is not None:
        return extra(in_channels=in_channels, out_channels=out_channels, add_downsample=add_downsample, options=options)
    raise ValueError(f"unknown down block type {block_type!r}; difflux has {', '.join(DOWN_BLOCK_TYPES)}")


def get_up_block(
    block_type: str,
    *,
    in_channels: int,
    prev_output_channel: int,
    out_channels: int,
    add_upsample: bool,
    options: BlockOptions,
    upsample_type: str | None = None,
) -> nn.Module:
    """Build an up block by its Diffusers type name (``"CrossAttnUpBlock2D"`` …)."""
    block_type = block_type.removeprefix("UNetRes")
    _check_cross_attention(block_type, options)
    if block_type == "UpBlock2D":
        return UpBlock2D(in_channels, prev_output_channel, out_channels, options, add_upsample)
    if block_type == "CrossAttnUpBlock2D":
        return CrossAttnUpBlock2D(in_channels, prev_output_channel, out_channels, options, add_upsample)
    if block_type == "AttnUpBlock2D":
        return AttnUpBlock2D(
            in_channels, prev_output_channel, out_channels, options, add_upsample, upsample_type or "conv"
        )
    if block_type == "UpDecoderBlock2D":
        return UpDecoderBlock2D(in_channels, out_channels, options, add_upsample)
    if block_type == "AttnUpDecoderBlock2D":
        return AttnUpDecoderBlock2D(in_channels, out_channels, options, add_upsample)
    if block_type == "SimpleCrossAttnUpBlock2D":
        return SimpleCrossAttnUpBlock2D(in_channels, prev_output_channel, out_channels, options, add_upsample)
    if block_type == "ResnetUpsampleBlock2D":
        return ResnetUpsampleBlock2D(
            in_channels, prev_output_channel, out_channels, options.with_resnet_options(), add_upsample
        )
    extra = _extra_block(block_type, "up")
    if extra is not None:
        return extra(
            in_channels=in_channels,
            prev_output_channel=prev_output_channel,
            out_channels=out_channels,
            add_upsample=add_upsample,
            options=options,
        )
    raise ValueError(f"unknown up block type {block_type!r}; difflux has {', '.join(UP_BLOCK_TYPES)}")


def get_mid_block(block_type: str | None, *, in_channels: int, options: BlockOptions) -> nn.Module | None:
    """Build a mid block by its Diffusers type name; ``None`` gives no mid block."""
    if block_type is None:
        return None
    _check_cross_attention(block_type, options)
    if block_type == "UNetMidBlock2DCrossAttn":
        return UNetMidBlock2DCrossAttn(in_channels, options)
    if block_type == "UNetMidBlock2D":
        return UNetMidBlock2D(in_channels, dataclasses.replace(options, num_layers=0), add_attention=False)
    if block_type == "UNetMidBlock2DSimpleCrossAttn":
        return UNetMidBlock2DSimpleCrossAttn(in_channels, options)
    raise ValueError(
        f"unknown mid block type {block_type!r}; expected 'UNetMidBlock2DCrossAttn', 'UNetMidBlock2D', "
        "'UNetMidBlock2DSimpleCrossAttn' or None"
    )


#: block types that need ``options.cross_attention_dim``
_NEEDS_CROSS_ATTENTION_DIM = frozenset(
    f"{prefix}{kind}Block2D" for prefix in ("CrossAttn", "SimpleCrossAttn") for kind in ("Down", "Up")
) | {"UNetMidBlock2DSimpleCrossAttn"}


def _check_cross_attention(block_type: str, options: BlockOptions) -> None:
    """:raises ValueError: when ``block_type`` needs a cross-attention width and ``options`` has none."""
    if block_type in _NEEDS_CROSS_ATTENTION_DIM and options.cross_attention_dim is None:
        raise ValueError(f"{block_type} needs cross_attention_dim")


#: Block types built in other modules: ``type name -> (module, builder)``; each builder takes the
#: keyword arguments of :func:`get_down_block` / :func:`get_up_block` (imported on first use).
_EXTRA_BLOCKS: dict[str, tuple[str, str]] = {
    "SkipDownBlock2D": ("difflux_models.unet_2d_skip_blocks", "SkipDownBlock2D"),
    "AttnSkipDownBlock2D": ("difflux_models.unet_2d_skip_blocks", "AttnSkipDownBlock2D"),
    "SkipUpBlock2D": ("difflux_models.unet_2d_skip_blocks", "SkipUpBlock2D"),
    "AttnSkipUpBlock2D": ("difflux_models.unet_2d_skip_blocks", "AttnSkipUpBlock2D"),
    "KDownBlock2D": ("difflux_models.unet_2d_k_blocks", "KDownBlock2D"),
    "KCrossAttnDownBlock2D": ("difflux_models.unet_2d_k_blocks", "KCrossAttnDownBlock2D"),
    "KUpBlock2D": ("difflux_models.unet_2d_k_blocks", "KUpBlock2D"),
    "KCrossAttnUpBlock2D": ("difflux_models.unet_2d_k_blocks", "KCrossAttnUpBlock2D"),
}


def _extra_block(block_type: str, kind: str) -> Callable[..., nn.Module] | None:
    import importlib

    found = _EXTRA_BLOCKS.get(block_type)
    if found is None or ("Down" in block_type) != (kind == "down"):
        return None
    module, name = found
    builder: Callable[..., nn.Module] = getattr(importlib.import_module(module), name).build
    return builder


DOWN_BLOCK_TYPES = (
    "DownBlock2D",
    "CrossAttnDownBlock2D",
    "AttnDownBlock2D",
    "DownEncoderBlock2D",
    "AttnDownEncoderBlock2D",
    "ResnetDownsampleBlock2D",
    "SimpleCrossAttnDownBlock2D",
    *(t for t in _EXTRA_BLOCKS if "Down" in t),
)
UP_BLOCK_TYPES = (
    "UpBlock2D",
    "CrossAttnUpBlock2D",
    "AttnUpBlock2D",
    "UpDecoderBlock2D",
    "AttnUpDecoderBlock2D",
    "ResnetUpsampleBlock2D",
    "SimpleCrossAttnUpBlock2D",
    *(t for t in _EXTRA_BLOCKS if "Up" in t),
)
