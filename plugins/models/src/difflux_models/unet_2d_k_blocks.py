"""The K-diffusion UNet blocks (Crowson's k-diffusion UNet, as used by the Stable Diffusion x2
latent upscaler): residual blocks with embedding-conditioned group norms
(:class:`~difflux_models.layers.resnet.ResnetBlockCondNorm2D`, ``"ada_group"``), attention blocks
without feed-forward (:class:`KAttentionBlock`), and fixed-kernel resampling
(:class:`~difflux_models.layers.sampling.KDownsample2D` / ``KUpsample2D``).

Group sizes are fixed at 32 channels per group, as in Diffusers. The block type names, options and
state-dict keys are Diffusers' (``KDownBlock2D``, ``KCrossAttnDownBlock2D``, ``KUpBlock2D``,
``KCrossAttnUpBlock2D``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers.attention import Attention
from .layers.normalization import AdaGroupNorm
from .layers.resnet import ResnetBlockCondNorm2D
from .layers.sampling import KDownsample2D, KUpsample2D
from .unet_2d_blocks import BlockOptions

__all__ = ["KAttentionBlock", "KCrossAttnDownBlock2D", "KCrossAttnUpBlock2D", "KDownBlock2D", "KUpBlock2D"]

#: channels per group of every norm in these blocks
GROUP_SIZE = 32


def _resnet(o: BlockOptions, in_channels: int, out_channels: int, groups_out: int, **extra: Any) -> nn.Module:
    if o.temb_channels is None:
        raise ValueError("the K-diffusion blocks need a timestep embedding (temb_channels)")
    return ResnetBlockCondNorm2D(
        in_channels=in_channels,
        out_channels=out_channels,
        dropout=o.dropout,
        temb_channels=o.temb_channels,
        groups=in_channels // GROUP_SIZE,
        groups_out=groups_out,
        eps=o.resnet_eps,
        non_linearity=o.resnet_act_fn,
        time_embedding_norm="ada_group",
        conv_shortcut_bias=False,
        **extra,
    )


class KAttentionBlock(nn.Module):
    """Optional self-attention, then cross-attention, each after an :class:`AdaGroupNorm` of the
    timestep embedding and added back to the input; no feed-forward. Keys ``norm1``, ``attn1``
    (self-attention only), ``norm2``, ``attn2``.

    ``forward(hidden_states (B, C, H, W), encoder_hidden_states (B, S, D), emb (B, T), ...)``.
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        dropout: float = 0.0,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        upcast_attention: bool = False,
        temb_channels: int = 768,
        add_self_attention: bool = False,
        cross_attention_norm: str | None = None,
        group_size: int = GROUP_SIZE,
    ) -> None:
        super().__init__()
        self.add_self_attention = add_self_attention
        groups = max(1, dim // group_size)
        if add_self_attention:
            self.norm1 = AdaGroupNorm(temb_channels, dim, groups)
            self.attn1 = Attention(
                dim, heads=num_attention_heads, dim_head=attention_head_dim, dropout=dropout, bias=attention_bias
            )
        self.norm2 = AdaGroupNorm(temb_channels, dim, groups)
        self.attn2 = Attention(
            dim,
            cross_attention_dim=cross_attention_dim,
            heads=num_attention_heads,
            dim_head=attention_head_dim,
            dropout=dropout,
            bias=attention_bias,
            upcast_attention=upcast_attention,
            cross_attention_norm=cross_attention_norm,
        )

    @staticmethod
    def _attend(
        attn: nn.Module,
        norm: nn.Module,
        hidden_states: torch.Tensor,
        emb: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        mask: torch.Tensor | None,
        kwargs: dict[str, Any],
    ) -> torch.Tensor:
        x = norm(hidden_states, emb)
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        out = attn(tokens, encoder_hidden_states=encoder_hidden_states, attention_mask=mask, **kwargs)
        out = out.permute(0, 2, 1).reshape(b, -1, h, w)
        return out + hidden_states  # type: ignore[no-any-return]

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        emb: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if emb is None:
            raise ValueError("KAttentionBlock needs the timestep embedding `emb` for its norms")
        kwargs = cross_attention_kwargs or {}
        if self.add_self_attention:
            hidden_states = self._attend(self.attn1, self.norm1, hidden_states, emb, None, attention_mask, kwargs)
        mask = attention_mask if encoder_hidden_states is None else encoder_attention_mask
        return self._attend(self.attn2, self.norm2, hidden_states, emb, encoder_hidden_states, mask, kwargs)


class KDownBlock2D(nn.Module):
    """Conditioned-norm residual blocks, then an optional :class:`KDownsample2D`. Returns
    ``(hidden, skip states)``, one state per residual block (taken before the downsample)."""

    has_cross_attention = False
    resnets: nn.ModuleList

    def __init__(
        self, in_channels: int, out_channels: int, options: BlockOptions, add_downsample: bool = False
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            _resnet(options, in_channels if i == 0 else out_channels, out_channels, out_channels // GROUP_SIZE)
            for i in range(options.num_layers)
        )
        self.downsamplers = nn.ModuleList([KDownsample2D()]) if add_downsample else None

    @classmethod
    def build(cls, *, in_channels: int, out_channels: int, add_downsample: bool, options: BlockOptions) -> nn.Module:
        return cls(in_channels, out_channels, options, add_downsample)

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None, **_: Any
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        states: tuple[torch.Tensor, ...] = ()
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
            states += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
        return hidden_states, states


class KCrossAttnDownBlock2D(nn.Module):
    """Conditioned-norm residual blocks each followed by a :class:`KAttentionBlock` (with
    self-attention in the last block, which does not downsample). Without a downsampler its skip
    states are ``None`` (Diffusers' K-UNet does not use them)."""

    has_cross_attention = True
    resnets: nn.ModuleList

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions, add_downsample: bool = True) -> None:
        super().__init__()
        o = options
        head_dim = o.attention_head_dim if o.attention_head_dim is not None else out_channels
        resnets: list[nn.Module] = []
        attentions: list[nn.Module] = []
        for i in range(o.num_layers):
            resnets.append(
                _resnet(o, in_channels if i == 0 else out_channels, out_channels, out_channels // GROUP_SIZE)
            )
            attentions.append(
                KAttentionBlock(
                    out_channels,
                    out_channels // head_dim,
                    head_dim,
                    cross_attention_dim=o.cross_attention_dim,
                    temb_channels=o.temb_channels or 0,
                    attention_bias=True,
                    add_self_attention=not add_downsample,
                    cross_attention_norm="layer_norm",
                )
            )
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)
        self.downsamplers = nn.ModuleList([KDownsample2D()]) if add_downsample else None

    @classmethod
    def build(cls, *, in_channels: int, out_channels: int, add_downsample: bool, options: BlockOptions) -> nn.Module:
        if options.cross_attention_dim is None:
            raise ValueError("KCrossAttnDownBlock2D needs cross_attention_dim")
        return cls(in_channels, out_channels, options, add_downsample)

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        additional_residuals: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        if additional_residuals is not None:
            raise ValueError(
                "KCrossAttnDownBlock2D does not take adapter residuals (down_intrablock_additional_residuals)"
            )
        states: tuple[torch.Tensor | None, ...] = ()
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            hidden_states = resnet(hidden_states, temb)
            hidden_states = attn(
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                emb=temb,
                attention_mask=attention_mask,
                cross_attention_kwargs=cross_attention_kwargs,
                encoder_attention_mask=encoder_attention_mask,
            )
            states += (hidden_states if self.downsamplers is not None else None,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
        return hidden_states, states


def _concat_last_skip(hidden_states: torch.Tensor, res_hidden_states_tuple: tuple[Any, ...]) -> torch.Tensor:
    """K up blocks read only the last skip state of their level (``None``: nothing to concatenate)."""
    last = res_hidden_states_tuple[-1] if res_hidden_states_tuple else None
    return hidden_states if last is None else torch.cat([hidden_states, last], dim=1)


class KUpBlock2D(nn.Module):
    """The last skip state concatenated, ``num_layers - 1`` conditioned-norm residual blocks (the
    last one maps to ``in_channels``), then an optional :class:`KUpsample2D`."""

    has_cross_attention = False
    resnets: nn.ModuleList

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions, add_upsample: bool = True) -> None:
        super().__init__()
        n = options.num_layers - 1
        self.resnets = nn.ModuleList(
            _resnet(
                options,
                2 * out_channels if i == 0 else out_channels,
                in_channels if i == n - 1 else out_channels,
                out_channels // GROUP_SIZE,
            )
            for i in range(n)
        )
        self.upsamplers = nn.ModuleList([KUpsample2D()]) if add_upsample else None

    @classmethod
    def build(
        cls,
        *,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        add_upsample: bool,
        options: BlockOptions,
    ) -> nn.Module:
        return cls(in_channels, out_channels, options, add_upsample)

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[Any, ...] = (),
        temb: torch.Tensor | None = None,
        upsample_size: tuple[int, int] | None = None,
        **_: Any,
    ) -> torch.Tensor:
        hidden_states = _concat_last_skip(hidden_states, res_hidden_states_tuple)
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, temb)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states)
        return hidden_states


class KCrossAttnUpBlock2D(nn.Module):
    """The last skip state concatenated, then ``num_layers - 1`` x (conditioned-norm residual block,
    :class:`KAttentionBlock`), then an optional :class:`KUpsample2D`.

    The first up block (``in_channels == out_channels == temb_channels``) takes no skip state
    and adds self-attention; a block that changes the width maps to ``in_channels`` in its last layer.
    """

    has_cross_attention = True
    resnets: nn.ModuleList

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions, add_upsample: bool = True) -> None:
        super().__init__()
        o = options
        head_dim = o.attention_head_dim if o.attention_head_dim is not None else out_channels
        is_first = in_channels == out_channels == o.temb_channels
        is_middle = in_channels != out_channels
        k_in = out_channels if is_first else 2 * out_channels
        k_out = in_channels
        n = o.num_layers - 1
        resnets: list[nn.Module] = []
        attentions: list[nn.Module] = []
        for i in range(n):
            last = i == n - 1
            resnets.append(
                _resnet(
                    o,
                    k_in if i == 0 else out_channels,
                    out_channels,
                    out_channels // GROUP_SIZE,
                    conv_2d_out_channels=k_out if is_middle and last else None,
                )
            )
            dim = k_out if last else out_channels
            attentions.append(
                KAttentionBlock(
                    dim,
                    dim // head_dim,
                    head_dim,
                    cross_attention_dim=o.cross_attention_dim,
                    temb_channels=o.temb_channels or 0,
                    attention_bias=True,
                    add_self_attention=is_first,
                    cross_attention_norm="layer_norm",
                    upcast_attention=o.upcast_attention,
                )
            )
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)
        self.upsamplers = nn.ModuleList([KUpsample2D()]) if add_upsample else None

    @classmethod
    def build(
        cls,
        *,
        in_channels: int,
        prev_output_channel: int,
        out_channels: int,
        add_upsample: bool,
        options: BlockOptions,
    ) -> nn.Module:
        if options.cross_attention_dim is None:
            raise ValueError("KCrossAttnUpBlock2D needs cross_attention_dim")
        return cls(in_channels, out_channels, options, add_upsample)

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[Any, ...] = (),
        temb: torch.Tensor | None = None,
        upsample_size: tuple[int, int] | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = _concat_last_skip(hidden_states, res_hidden_states_tuple)
        for resnet, attn in zip(self.resnets, self.attentions, strict=True):
            hidden_states = resnet(hidden_states, temb)
            hidden_states = attn(
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                emb=temb,
                attention_mask=attention_mask,
                cross_attention_kwargs=cross_attention_kwargs,
                encoder_attention_mask=encoder_attention_mask,
            )
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states)
        return hidden_states
