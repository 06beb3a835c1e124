"""``Kandinsky3UNet``: the UNet of Kandinsky 3 (Arkhipkin et al. 2023, "Kandinsky 3.0 Technical Report").

Every level is a stack of bottleneck residual blocks (1x1, 3x3, 3x3, 1x1 convolutions, each after a
group norm modulated by the time embedding) with cross-attention to the projected text states in
between, plus one self-attention per level; resampling is a stride-2 convolution (down) or
transposed convolution (up) inside the first / last residual block. The text states also condition
the time embedding through attention pooling. Keys and config are Diffusers'.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, ClassVar

import torch
from difflux.modeling import ModelMixin
from difflux.outputs import BaseOutput
from torch import nn

from .layers.attention import Attention, AttentionProcessorMixin
from .layers.embeddings import TimestepEmbedding, Timesteps

__all__ = [
    "Kandinsky3AttentionBlock",
    "Kandinsky3AttentionPooling",
    "Kandinsky3ConditionalGroupNorm",
    "Kandinsky3EncoderProj",
    "Kandinsky3ResNetBlock",
    "Kandinsky3UNet",
    "Kandinsky3UNetOutput",
]

#: whether each level (of the four-level published layout) has cross- and self-attention
_WITH_ATTENTION: tuple[bool, ...] = (False, True, True, True)

#: residual-block resampling per convolution: None none, True transposed-conv up, False stride-2 down
Resolutions = list[bool | None]


@dataclasses.dataclass
class Kandinsky3UNetOutput(BaseOutput):
    """The predicted noise, shaped like the input ``sample``."""

    sample: torch.Tensor


class Kandinsky3EncoderProj(nn.Module):
    """Text states ``(B, S, encoder_hid_dim)`` to ``(B, S, cross_attention_dim)``: linear (no bias), layer norm."""

    def __init__(self, encoder_hid_dim: int, cross_attention_dim: int) -> None:
        super().__init__()
        self.projection_linear = nn.Linear(encoder_hid_dim, cross_attention_dim, bias=False)
        self.projection_norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.projection_norm(self.projection_linear(x))
        return out


class Kandinsky3ConditionalGroupNorm(nn.Module):
    """Group norm without affine weights, scaled and shifted by ``context_mlp(time_embed)`` (zero-initialised,
    so a fresh block starts as a plain group norm)."""

    def __init__(self, groups: int, normalized_shape: int, context_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, normalized_shape, affine=False)
        projection = nn.Linear(context_dim, 2 * normalized_shape)
        nn.init.zeros_(projection.weight)  # skipped on the meta device (loading)
        nn.init.zeros_(projection.bias)
        self.context_mlp = nn.Sequential(nn.SiLU(), projection)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = self.context_mlp(context)
        context = context.reshape(*context.shape, *[1] * (x.ndim - 2))
        scale, shift = context.chunk(2, dim=1)
        out: torch.Tensor = self.norm(x) * (scale + 1.0) + shift
        return out


class Kandinsky3Block(nn.Module):
    """Conditional group norm, SiLU, optional 2x transposed-conv upsample, convolution, optional
    stride-2 convolution downsample."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_embed_dim: int,
        kernel_size: int = 3,
        norm_groups: int = 32,
        up_resolution: bool | None = None,
    ) -> None:
        super().__init__()
        self.group_norm = Kandinsky3ConditionalGroupNorm(norm_groups, in_channels, time_embed_dim)
        self.activation = nn.SiLU()
        self.up_sample: nn.Module = (
            nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2) if up_resolution else nn.Identity()
        )
        self.projection = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, padding=int(kernel_size > 1))
        self.down_sample: nn.Module = (
            nn.Conv2d(out_channels, out_channels, kernel_size=2, stride=2)
            if up_resolution is not None and not up_resolution
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, time_embed: torch.Tensor) -> torch.Tensor:
        x = self.up_sample(self.activation(self.group_norm(x, time_embed)))
        out: torch.Tensor = self.down_sample(self.projection(x))
        return out


class Kandinsky3ResNetBlock(nn.Module):
    """Four :class:`Kandinsky3Block` (kernels 1, 3, 3, 1) through ``max(in, out) / compression_ratio``
    channels, plus a shortcut resampled and projected to match."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_embed_dim: int,
        norm_groups: int = 32,
        compression_ratio: int = 2,
        up_resolutions: Resolutions | None = None,
    ) -> None:
        super().__init__()
        resolutions: Resolutions = up_resolutions if up_resolutions is not None else [None] * 4
        hidden = max(in_channels, out_channels) // compression_ratio
        channels = [(in_channels, hidden), (hidden, hidden), (hidden, hidden), (hidden, out_channels)]
        self.resnet_blocks = nn.ModuleList(
            Kandinsky3Block(cin, cout, time_embed_dim, kernel, norm_groups, resolution)
            for (cin, cout), kernel, resolution in zip(channels, (1, 3, 3, 1), resolutions, strict=True)
        )
        self.shortcut_up_sample: nn.Module = (
            nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
            if True in resolutions
            else nn.Identity()
        )
        self.shortcut_projection: nn.Module = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )
        self.shortcut_down_sample: nn.Module = (
            nn.Conv2d(out_channels, out_channels, kernel_size=2, stride=2) if False in resolutions else nn.Identity()
        )

    def forward(self, x: torch.Tensor, time_embed: torch.Tensor) -> torch.Tensor:
        out = x
        for block in self.resnet_blocks:
            out = block(out, time_embed)
        shortcut = self.shortcut_down_sample(self.shortcut_projection(self.shortcut_up_sample(x)))
        return shortcut + out  # type: ignore[no-any-return]


class Kandinsky3AttentionPooling(nn.Module):
    """Adds attention-pooled text states to the time embedding: the mean text token attends over
    the text (masked), projected to the time-embedding width."""

    def __init__(self, num_channels: int, context_dim: int, head_dim: int = 64) -> None:
        super().__init__()
        self.attention = Attention(context_dim, context_dim, dim_head=head_dim, out_dim=num_channels, out_bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = context_mask.to(dtype=context.dtype) if context_mask is not None else None
        pooled: torch.Tensor = self.attention(context.mean(dim=1, keepdim=True), context, mask)
        return x + pooled.squeeze(1)


class Kandinsky3AttentionBlock(nn.Module):
    """Conditional norm, attention (self-attention, or cross-attention to ``context``), residual;
    conditional norm, 1x1-conv feed-forward (``expansion_ratio`` wider, SiLU), residual."""

    def __init__(
        self,
        num_channels: int,
        time_embed_dim: int,
        context_dim: int | None = None,
        norm_groups: int = 32,
        head_dim: int = 64,
        expansion_ratio: int = 4,
    ) -> None:
        super().__init__()
        self.in_norm = Kandinsky3ConditionalGroupNorm(norm_groups, num_channels, time_embed_dim)
        self.attention = Attention(
            num_channels, context_dim or num_channels, dim_head=head_dim, out_dim=num_channels, out_bias=False
        )
        hidden = expansion_ratio * num_channels
        self.out_norm = Kandinsky3ConditionalGroupNorm(norm_groups, num_channels, time_embed_dim)
        self.feed_forward = nn.Sequential(
            nn.Conv2d(num_channels, hidden, kernel_size=1, bias=False),
            nn.SiLU(),
            nn.Conv2d(hidden, num_channels, kernel_size=1, bias=False),
        )

    def forward(
        self,
        x: torch.Tensor,
        time_embed: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, _, h, w = x.shape
        out = self.in_norm(x, time_embed).reshape(b, -1, h * w).permute(0, 2, 1)
        context = context if context is not None else out
        mask = context_mask.to(dtype=context.dtype) if context_mask is not None else None
        out = self.attention(out, context, mask)
        x = x + out.permute(0, 2, 1).reshape(b, -1, h, w)
        return x + self.feed_forward(self.out_norm(x, time_embed))  # type: ignore[no-any-return]


class _Kandinsky3Level(nn.Module):
    """One level: a self-attention (``attentions.0``), then per layer ``resnets_in``, a cross-attention
    (``attentions.i+1``, when the level has text) and ``resnets_out``; the self-attention runs first
    (down levels) or last (up levels)."""

    #: whether the self-attention runs before the layers (down) or after them (up)
    self_attention_first: ClassVar[bool] = True

    def __init__(
        self,
        self_attention_channels: int,
        layers: list[tuple[int, int, int, Resolutions, Resolutions]],
        time_embed_dim: int,
        context_dim: int | None,
        groups: int,
        head_dim: int,
        expansion_ratio: int,
        compression_ratio: int,
        self_attention: bool,
    ) -> None:
        """``layers``: ``(in, cross-attention width, out, resnet_in resolutions, resnet_out resolutions)``."""
        super().__init__()
        self.self_attention = self_attention
        self.context_dim = context_dim
        attentions: list[nn.Module] = [
            Kandinsky3AttentionBlock(self_attention_channels, time_embed_dim, None, groups, head_dim, expansion_ratio)
            if self_attention
            else nn.Identity()
        ]
        resnets_in: list[nn.Module] = []
        resnets_out: list[nn.Module] = []
        for cin, mid, cout, res_in, res_out in layers:
            resnets_in.append(Kandinsky3ResNetBlock(cin, mid, time_embed_dim, groups, compression_ratio, res_in))
            attentions.append(
                Kandinsky3AttentionBlock(mid, time_embed_dim, context_dim, groups, head_dim, expansion_ratio)
                if context_dim is not None
                else nn.Identity()
            )
            resnets_out.append(Kandinsky3ResNetBlock(mid, cout, time_embed_dim, groups, compression_ratio, res_out))
        self.attentions = nn.ModuleList(attentions)
        self.resnets_in = nn.ModuleList(resnets_in)
        self.resnets_out = nn.ModuleList(resnets_out)

    def forward(
        self,
        x: torch.Tensor,
        time_embed: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``(B, C, H, W)`` through the level; ``time_embed`` ``(B, time_embed_dim)``, ``context``
        ``(B, S, context_dim)`` for the cross-attentions, ``context_mask`` an additive bias ``(B, 1, S)``."""
        if self.self_attention and self.self_attention_first:
            x = self.attentions[0](x, time_embed)
        for attention, resnet_in, resnet_out in zip(self.attentions[1:], self.resnets_in, self.resnets_out):
            x = resnet_in(x, time_embed)
            if self.context_dim is not None:
                x = attention(x, time_embed, context, context_mask)
            x = resnet_out(x, time_embed)
        if self.self_attention and not self.self_attention_first:
            x = self.attentions[0](x, time_embed)
        return x


class Kandinsky3DownSampleBlock(_Kandinsky3Level):
    """Self-attention first, then the layers; the last ``resnets_out`` downsamples."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_embed_dim: int,
        context_dim: int | None = None,
        num_blocks: int = 3,
        groups: int = 32,
        head_dim: int = 64,
        expansion_ratio: int = 4,
        compression_ratio: int = 2,
        down_sample: bool = True,
        self_attention: bool = True,
    ) -> None:
        none: Resolutions = [None] * 4
        last: Resolutions = [None, None, False if down_sample else None, None]
        layers = [
            (
                in_channels if i == 0 else out_channels,
                out_channels,
                out_channels,
                none,
                last if i == num_blocks - 1 else none,
            )
            for i in range(num_blocks)
        ]
        super().__init__(
            in_channels,
            layers,
            time_embed_dim,
            context_dim,
            groups,
            head_dim,
            expansion_ratio,
            compression_ratio,
            self_attention,
        )


class Kandinsky3UpSampleBlock(_Kandinsky3Level):
    """The layers (the first ``resnets_in`` upsamples and takes the concatenated skip), then self-attention."""

    self_attention_first = False

    def __init__(
        self,
        in_channels: int,
        cat_dim: int,
        out_channels: int,
        time_embed_dim: int,
        context_dim: int | None = None,
        num_blocks: int = 3,
        groups: int = 32,
        head_dim: int = 64,
        expansion_ratio: int = 4,
        compression_ratio: int = 2,
        up_sample: bool = True,
        self_attention: bool = True,
    ) -> None:
        none: Resolutions = [None] * 4
        first: Resolutions = [None, True if up_sample else None, None, None]
        channels = [(in_channels + cat_dim, in_channels)] + [(in_channels, in_channels)] * (num_blocks - 2)
        channels.append((in_channels, out_channels))
        layers = [
            (cin, cin, cout, first if i == 0 else none, none) for i, (cin, cout) in enumerate(channels[:num_blocks])
        ]
        super().__init__(
            out_channels,
            layers,
            time_embed_dim,
            context_dim,
            groups,
            head_dim,
            expansion_ratio,
            compression_ratio,
            self_attention,
        )


class Kandinsky3UNet(ModelMixin, AttentionProcessorMixin):
    """The Kandinsky 3 UNet; config keys as Diffusers' ``Kandinsky3UNet``.

    Attention per level follows the published four-level layout: the first down level and the
    last up level have neither cross- nor self-attention, the others both (with fewer levels the
    up path still reads the flags from the end, as Diffusers does).
    """

    def __init__(
        self,
        in_channels: int = 4,
        time_embedding_dim: int = 1536,
        groups: int = 32,
        attention_head_dim: int = 64,
        layers_per_block: int = 3,
        block_out_channels: tuple[int, ...] = (384, 768, 1536, 3072),
        cross_attention_dim: int = 4096,
        encoder_hid_dim: int = 4096,
    ) -> None:
        super().__init__()
        if not isinstance(layers_per_block, int) or not isinstance(cross_attention_dim, int):
            raise ValueError(
                "Kandinsky3UNet: layers_per_block and cross_attention_dim must be ints (one value for every level), "
                f"got {layers_per_block!r} and {cross_attention_dim!r}"
            )
        if not 1 <= len(block_out_channels) <= len(_WITH_ATTENTION):
            raise ValueError(
                f"Kandinsky3UNet: 1 to {len(_WITH_ATTENTION)} levels (block_out_channels), "
                f"got {len(block_out_channels)}"
            )
        expansion_ratio, compression_ratio = 4, 2
        down_attention = _WITH_ATTENTION
        up_attention = _WITH_ATTENTION[::-1]  # read from the end, whatever the number of levels (as Diffusers does)
        init_channels = block_out_channels[0] // 2
        self.time_proj = Timesteps(init_channels, flip_sin_to_cos=False, downscale_freq_shift=1)
        self.time_embedding = TimestepEmbedding(init_channels, time_embedding_dim)
        self.add_time_condition = Kandinsky3AttentionPooling(
            time_embedding_dim, cross_attention_dim, attention_head_dim
        )
        self.conv_in = nn.Conv2d(in_channels, init_channels, kernel_size=3, padding=1)
        self.encoder_hid_proj = Kandinsky3EncoderProj(encoder_hid_dim, cross_attention_dim)

        dims = [init_channels, *block_out_channels]
        in_out = list(itertools.pairwise(dims))
        self.num_levels = len(in_out)
        last = self.num_levels - 1
        common: dict[str, Any] = {
            "num_blocks": layers_per_block,
            "groups": groups,
            "head_dim": attention_head_dim,
            "expansion_ratio": expansion_ratio,
            "compression_ratio": compression_ratio,
        }
        self.down_blocks = nn.ModuleList(
            Kandinsky3DownSampleBlock(
                cin,
                cout,
                time_embedding_dim,
                cross_attention_dim if down_attention[level] else None,
                down_sample=level != last,
                self_attention=down_attention[level],
                **common,
            )
            for level, (cin, cout) in enumerate(in_out)
        )
        cat_dims = [cout if level != last else 0 for level, (_, cout) in enumerate(in_out)]
        self.up_blocks = nn.ModuleList(
            Kandinsky3UpSampleBlock(
                cin,
                cat_dims[last - level],
                cout,
                time_embedding_dim,
                cross_attention_dim if up_attention[level] else None,
                up_sample=level != 0,
                self_attention=up_attention[level],
                **common,
            )
            for level, (cout, cin) in enumerate(reversed(in_out))
        )
        self.conv_norm_out = nn.GroupNorm(groups, init_channels)
        self.conv_act_out = nn.SiLU()
        self.conv_out = nn.Conv2d(init_channels, in_channels, kernel_size=3, padding=1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Kandinsky3UNetOutput | tuple[torch.Tensor]:
        """Predict the noise in ``sample`` ``(B, in_channels, H, W)`` at ``timestep``.

        :param encoder_hidden_states: text states ``(B, S, encoder_hid_dim)``.
        :param encoder_attention_mask: ``(B, S)``, 1 keep, 0 discard.
        :raises ValueError: without ``encoder_hidden_states``.
        """
        if encoder_hidden_states is None:
            raise ValueError("Kandinsky3UNet needs encoder_hidden_states (the text encoder states)")
        mask = None
        if encoder_attention_mask is not None:
            mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if not isinstance(timestep, torch.Tensor):
            dtype = torch.float32 if isinstance(timestep, float) else torch.int32
            timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(sample.device)
        timestep = timestep.expand(sample.shape[0])
        time_embed = self.time_embedding(self.time_proj(timestep).to(sample.dtype))
        context = self.encoder_hid_proj(encoder_hidden_states)
        time_embed = self.add_time_condition(time_embed, context, mask)

        skips: list[torch.Tensor] = []
        sample = self.conv_in(sample)
        for level, block in enumerate(self.down_blocks):
            sample = block(sample, time_embed, context, mask)
            if level != self.num_levels - 1:
                skips.append(sample)
        for level, block in enumerate(self.up_blocks):
            if level != 0:
                sample = torch.cat([sample, skips.pop()], dim=1)
            sample = block(sample, time_embed, context, mask)
        sample = self.conv_out(self.conv_act_out(self.conv_norm_out(sample)))
        if not return_dict:
            return (sample,)
        return Kandinsky3UNetOutput(sample=sample)
