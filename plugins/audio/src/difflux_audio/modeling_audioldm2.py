"""AudioLDM 2's own models: the UNet with several attention layers per block reading two encoder
states, and the projection of CLAP and T5 embeddings into the language model's space.

AudioLDM 2: Liu et al. 2023, "AudioLDM 2: Learning Holistic Audio Generation with Self-supervised
Pretraining", arXiv:2308.05734. Config keys and state-dict keys are Diffusers'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from difflux.modeling import ModelMixin
from difflux.outputs import BaseOutput
from difflux_models.layers.activations import get_activation
from difflux_models.layers.attention import AttentionProcessorMixin
from difflux_models.layers.embeddings import TimestepEmbedding, Timesteps, class_embedding
from difflux_models.layers.sampling import Downsample2D, Upsample2D
from difflux_models.layers.transformer_2d import SpatialTransformer2D
from difflux_models.unet_2d_blocks import BlockOptions, DownBlock2D, OutputHeadMixin, UpBlock2D
from difflux_models.unet_2d_condition import UNet2DConditionOutput, timesteps_tensor
from torch import nn

__all__ = [
    "AudioLDM2ProjectionModel",
    "AudioLDM2ProjectionModelOutput",
    "AudioLDM2UNet2DConditionModel",
]


# -- the projection model ------------------------------------------------------------------------


@dataclasses.dataclass
class AudioLDM2ProjectionModelOutput(BaseOutput):
    """``hidden_states`` ``(batch, 1 + S1 + 1 + 1 + S2 + 1, language_model_dim)``: both projected
    sequences, each between its learned start and end vectors; ``attention_mask`` ``(batch, seq)``
    (``None`` when neither input had one)."""

    hidden_states: torch.Tensor
    attention_mask: torch.Tensor | None = None


def _bracket(
    states: torch.Tensor, mask: torch.Tensor | None, start: torch.Tensor, end: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[start, states, end]`` along the sequence, the mask extended by one kept position each side."""
    batch = states.shape[0]
    states = torch.cat([start.expand(batch, 1, -1), states, end.expand(batch, 1, -1)], dim=1)
    if mask is not None:
        one = mask.new_ones((batch, 1))
        mask = torch.cat([one, mask, one], dim=-1)
    return states, mask


class AudioLDM2ProjectionModel(ModelMixin):
    """Project the CLAP embedding ``(batch, S1, text_encoder_dim)`` and the T5 (or VITS) states
    ``(batch, S2, text_encoder_1_dim)`` to the language model's width and concatenate them, each
    between learned start / end vectors. (``langauge_model_dim`` is spelled as Diffusers spells it.)
    """

    def __init__(
        self,
        text_encoder_dim: int,
        text_encoder_1_dim: int,
        langauge_model_dim: int,
        use_learned_position_embedding: bool | None = None,
        max_seq_length: int | None = None,
    ) -> None:
        super().__init__()
        self.projection = nn.Linear(text_encoder_dim, langauge_model_dim)
        self.projection_1 = nn.Linear(text_encoder_1_dim, langauge_model_dim)
        self.sos_embed = nn.Parameter(torch.ones(langauge_model_dim))
        self.eos_embed = nn.Parameter(torch.ones(langauge_model_dim))
        self.sos_embed_1 = nn.Parameter(torch.ones(langauge_model_dim))
        self.eos_embed_1 = nn.Parameter(torch.ones(langauge_model_dim))
        self.use_learned_position_embedding = use_learned_position_embedding
        if use_learned_position_embedding is not None:
            if max_seq_length is None:
                raise ValueError("AudioLDM2ProjectionModel: use_learned_position_embedding needs max_seq_length")
            self.learnable_positional_embedding = nn.Parameter(torch.zeros((1, text_encoder_1_dim, max_seq_length)))

    def forward(
        self,
        hidden_states: torch.Tensor,
        hidden_states_1: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        attention_mask_1: torch.Tensor | None = None,
    ) -> AudioLDM2ProjectionModelOutput:
        """Both sequences projected and joined; masks ``(batch, seq)`` with 1 = keep (either may be ``None``)."""
        first, mask = _bracket(self.projection(hidden_states), attention_mask, self.sos_embed, self.eos_embed)
        if self.use_learned_position_embedding is not None:
            hidden_states_1 = hidden_states_1 + self.learnable_positional_embedding.permute(0, 2, 1)
        second, mask_1 = _bracket(
            self.projection_1(hidden_states_1), attention_mask_1, self.sos_embed_1, self.eos_embed_1
        )
        states = torch.cat([first, second], dim=1)
        if mask is None and mask_1 is not None:
            mask = mask_1.new_ones(first.shape[:2])
        elif mask is not None and mask_1 is None:
            mask_1 = mask.new_ones(second.shape[:2])
        joined = torch.cat([mask, mask_1], dim=-1) if mask is not None and mask_1 is not None else None
        return AudioLDM2ProjectionModelOutput(hidden_states=states, attention_mask=joined)


# -- the UNet's blocks ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Context:
    """The two encoder states and their masks (already additive biases) the blocks route."""

    states: torch.Tensor | None
    mask: torch.Tensor | None
    states_1: torch.Tensor | None
    mask_1: torch.Tensor | None
    attention_mask: torch.Tensor | None = None

    def run(self, attn: nn.Module, idx: int, dim: int | None, hidden: torch.Tensor) -> torch.Tensor:
        """Attention ``idx`` of a layer: none reads self-attention only (``dim`` ``None``), the first two
        read ``states``, later ones ``states_1``."""
        if dim is None:
            states, mask = None, None
        elif idx <= 1:
            states, mask = self.states, self.mask
        else:
            states, mask = self.states_1, self.mask_1
        out: torch.Tensor = attn(
            hidden, encoder_hidden_states=states, attention_mask=self.attention_mask, encoder_attention_mask=mask
        )
        return out


def _dims(cross_attention_dim: int | Sequence[int | None] | None) -> tuple[int | None, ...]:
    if cross_attention_dim is None or isinstance(cross_attention_dim, int):
        return (cross_attention_dim,)
    dims = tuple(cross_attention_dim)
    if len(dims) > 4:
        raise ValueError(f"AudioLDM2 blocks take up to 4 attention layers per residual block, got {dims}")
    return dims


def _transformers(o: BlockOptions, dims: tuple[int | None, ...], channels: int) -> list[nn.Module]:
    heads = o.num_attention_heads
    return [
        SpatialTransformer2D(
            heads,
            channels // heads,
            in_channels=channels,
            num_layers=o.layers_per_attention(0),
            cross_attention_dim=dim,
            norm_num_groups=o.resnet_groups,
            use_linear_projection=o.use_linear_projection,
            only_cross_attention=o.only_cross_attention,
            upcast_attention=o.upcast_attention,
            double_self_attention=dim is None,
        )
        for dim in dims
    ]


class AudioLDM2CrossAttnDownBlock2D(nn.Module):
    """Residual block, then one spatial transformer per entry of ``cross_attention_dim``, per layer."""

    has_cross_attention = True

    def __init__(self, in_channels: int, out_channels: int, options: BlockOptions, add_downsample: bool) -> None:
        super().__init__()
        o = options
        self.cross_attention_dim = _dims(o.cross_attention_dim)
        resnets, attentions = [], []
        for i in range(o.num_layers):
            resnets.append(o.resnet(in_channels if i == 0 else out_channels, out_channels))
            attentions += _transformers(o, self.cross_attention_dim, out_channels)
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.downsamplers = (
            nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=o.downsample_padding,
                              name="op")]
            )
            if add_downsample
            else None
        )

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, ctx: _Context
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        k = len(self.cross_attention_dim)
        states: tuple[torch.Tensor, ...] = ()
        for i, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states, temb)
            for idx, dim in enumerate(self.cross_attention_dim):
                hidden_states = ctx.run(self.attentions[i * k + idx], idx, dim, hidden_states)
            states += (hidden_states,)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                hidden_states = down(hidden_states)
            states += (hidden_states,)
        return hidden_states, states


class AudioLDM2MidBlock2DCrossAttn(nn.Module):
    """Residual block, then per layer: the spatial transformers, a residual block."""

    has_cross_attention = True

    def __init__(self, in_channels: int, options: BlockOptions) -> None:
        super().__init__()
        o = options
        self.cross_attention_dim = _dims(o.cross_attention_dim)
        resnets = [o.resnet(in_channels, in_channels)]
        attentions: list[nn.Module] = []
        for _ in range(o.num_layers):
            attentions += _transformers(o, self.cross_attention_dim, in_channels)
            resnets.append(o.resnet(in_channels, in_channels))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, ctx: _Context) -> torch.Tensor:
        k = len(self.cross_attention_dim)
        hidden_states = self.resnets[0](hidden_states, temb)
        for i, resnet in enumerate(self.resnets[1:]):
            for idx, dim in enumerate(self.cross_attention_dim):
                hidden_states = ctx.run(self.attentions[i * k + idx], idx, dim, hidden_states)
            hidden_states = resnet(hidden_states, temb)
        return hidden_states


class AudioLDM2CrossAttnUpBlock2D(nn.Module):
    """Residual block fed the skip state, then the spatial transformers, per layer; then the upsampler."""

    has_cross_attention = True

    def __init__(
        self, in_channels: int, prev_output_channel: int, out_channels: int, options: BlockOptions, add_upsample: bool
    ) -> None:
        super().__init__()
        o = options
        n = o.num_layers
        self.cross_attention_dim = _dims(o.cross_attention_dim)
        resnets, attentions = [], []
        for i in range(n):
            skip = in_channels if i == n - 1 else out_channels
            resnets.append(o.resnet((prev_output_channel if i == 0 else out_channels) + skip, out_channels))
            attentions += _transformers(o, self.cross_attention_dim, out_channels)
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
            if add_upsample
            else None
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor,
        ctx: _Context,
        upsample_size: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        k = len(self.cross_attention_dim)
        skips = list(res_hidden_states_tuple)
        for i, resnet in enumerate(self.resnets):
            hidden_states = resnet(torch.cat([hidden_states, skips.pop()], dim=1), temb)
            for idx, dim in enumerate(self.cross_attention_dim):
                hidden_states = ctx.run(self.attentions[i * k + idx], idx, dim, hidden_states)
        if self.upsamplers is not None:
            for up in self.upsamplers:
                hidden_states = up(hidden_states, upsample_size)
        return hidden_states


# -- the UNet ------------------------------------------------------------------------------------


def _per_block(value: Any, n: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"AudioLDM2UNet2DConditionModel: {name} has {len(value)} entries for {n} blocks")
        return list(value)
    return [value] * n


def _bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if mask is None else ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


class AudioLDM2UNet2DConditionModel(ModelMixin, AttentionProcessorMixin, OutputHeadMixin):
    """AudioLDM 2's UNet: ``UNet2DConditionModel``'s layout where each cross-attention block holds,
    per residual block, one spatial transformer per entry of its ``cross_attention_dim`` (a list per
    block): ``None`` is self-attention only, the first two read ``encoder_hidden_states`` (the
    language model's output), the others ``encoder_hidden_states_1`` (T5).

    Down blocks: ``DownBlock2D`` / ``CrossAttnDownBlock2D``; mid block ``UNetMidBlock2DCrossAttn``;
    up blocks ``UpBlock2D`` / ``CrossAttnUpBlock2D`` (Diffusers' names and keys).
    """

    _no_split_modules = ("BasicTransformerBlock", "ResnetBlock2D")

    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | Sequence[Any] = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        class_embeddings_concat: bool = False,
    ) -> None:
        super().__init__()
        n = len(down_block_types)
        if len(up_block_types) != n or len(block_out_channels) != n:
            raise ValueError(
                f"AudioLDM2UNet2DConditionModel: down_block_types ({n}), up_block_types ({len(up_block_types)}) and "
                f"block_out_channels ({len(block_out_channels)}) must have the same length"
            )
        if num_attention_heads is not None:
            raise ValueError(
                "AudioLDM2UNet2DConditionModel: set attention_head_dim (the number of heads), not num_attention_heads"
            )
        if time_embedding_type != "positional":
            raise ValueError(f"AudioLDM2UNet2DConditionModel: time_embedding_type must be 'positional', "
                             f"got {time_embedding_type!r}")
        if mid_block_type != "UNetMidBlock2DCrossAttn":
            raise ValueError(f"AudioLDM2UNet2DConditionModel: mid_block_type must be 'UNetMidBlock2DCrossAttn', "
                             f"got {mid_block_type!r}")
        if norm_num_groups is None:
            raise ValueError("AudioLDM2UNet2DConditionModel: norm_num_groups=None is not supported")
        heads = _per_block(attention_head_dim, n, "attention_head_dim")
        layers = _per_block(layers_per_block, n, "layers_per_block")
        t_layers = _per_block(transformer_layers_per_block, n, "transformer_layers_per_block")
        only_cross = _per_block(only_cross_attention, n, "only_cross_attention")
        cross_dims = (
            [cross_attention_dim] * n if isinstance(cross_attention_dim, int) else list(cross_attention_dim)
        )
        if len(cross_dims) != n:
            raise ValueError(f"AudioLDM2UNet2DConditionModel: cross_attention_dim has {len(cross_dims)} entries "
                             f"for {n} blocks")

        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], conv_in_kernel, padding=(conv_in_kernel - 1) // 2)
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(
            block_out_channels[0], time_embed_dim, act_fn=act_fn, post_act_fn=timestep_post_act,
            cond_proj_dim=time_cond_proj_dim,
        )
        self.class_embedding = class_embedding(
            class_embed_type,
            num_class_embeds=num_class_embeds,
            timestep_input_dim=block_out_channels[0],
            time_embed_dim=time_embed_dim,
            act_fn=act_fn,
            projection_input_dim=projection_class_embeddings_input_dim,
            allow_projection=True,
        )
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn is not None else None

        base = BlockOptions(
            temb_channels=time_embed_dim * 2 if class_embeddings_concat else time_embed_dim,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            resnet_time_scale_shift=resnet_time_scale_shift,
            downsample_padding=downsample_padding,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
        )

        def options(i: int, **extra: Any) -> BlockOptions:
            return dataclasses.replace(
                base, num_layers=layers[i], transformer_layers_per_block=t_layers[i], num_attention_heads=heads[i],
                cross_attention_dim=cross_dims[i], only_cross_attention=only_cross[i], **extra,
            )

        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(down_block_types):
            ins, outs, last = (block_out_channels[max(i - 1, 0)], block_out_channels[i], i == n - 1)
            kind = kind.removeprefix("UNetRes")
            if kind == "DownBlock2D":
                self.down_blocks.append(DownBlock2D(ins, outs, options(i), add_downsample=not last))
            elif kind == "CrossAttnDownBlock2D":
                self.down_blocks.append(AudioLDM2CrossAttnDownBlock2D(ins, outs, options(i), add_downsample=not last))
            else:
                raise ValueError(f"AudioLDM2UNet2DConditionModel: unknown down block type {kind!r}; "
                                 "expected 'DownBlock2D' or 'CrossAttnDownBlock2D'")
        self.up_blocks = nn.ModuleList()  # registered before the mid block (Diffusers' order)
        self.mid_block = AudioLDM2MidBlock2DCrossAttn(
            block_out_channels[-1],
            dataclasses.replace(options(n - 1, output_scale_factor=mid_block_scale_factor), num_layers=1),
        )
        rev = list(reversed(block_out_channels))
        rev_layers, rev_t, rev_heads = layers[::-1], t_layers[::-1], heads[::-1]
        rev_dims, rev_only = cross_dims[::-1], only_cross[::-1]
        self.num_upsamplers = n - 1
        for i, kind in enumerate(up_block_types):
            prev, out, ins = rev[max(i - 1, 0)], rev[i], rev[min(i + 1, n - 1)]
            o = dataclasses.replace(
                base, num_layers=rev_layers[i] + 1, transformer_layers_per_block=rev_t[i],
                num_attention_heads=rev_heads[i], cross_attention_dim=rev_dims[i], only_cross_attention=rev_only[i],
            )
            kind = kind.removeprefix("UNetRes")
            if kind == "UpBlock2D":
                self.up_blocks.append(UpBlock2D(ins, prev, out, o, add_upsample=i < n - 1))
            elif kind == "CrossAttnUpBlock2D":
                self.up_blocks.append(AudioLDM2CrossAttnUpBlock2D(ins, prev, out, o, add_upsample=i < n - 1))
            else:
                raise ValueError(f"AudioLDM2UNet2DConditionModel: unknown up block type {kind!r}; "
                                 "expected 'UpBlock2D' or 'CrossAttnUpBlock2D'")
        self._init_output_head(
            block_out_channels[0], out_channels, groups=norm_num_groups, eps=norm_eps, act_fn=act_fn,
            kernel_size=conv_out_kernel,
        )

    def _embedding(
        self, sample: torch.Tensor, timestep: Any, timestep_cond: torch.Tensor | None, class_labels: torch.Tensor | None
    ) -> torch.Tensor:
        t_emb = self.time_proj(timesteps_tensor(timestep, sample)).to(dtype=sample.dtype)
        emb: torch.Tensor = self.time_embedding(t_emb, timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("AudioLDM2UNet2DConditionModel: this UNet has a class embedding: pass class_labels")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(dtype=sample.dtype)
            class_emb = self.class_embedding(class_labels).to(dtype=sample.dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if self.config.class_embeddings_concat else emb + class_emb
        return self.time_embed_act(emb) if self.time_embed_act is not None else emb

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor | None,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        encoder_hidden_states_1: torch.Tensor | None = None,
        encoder_attention_mask_1: torch.Tensor | None = None,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Predict from a noisy ``sample`` ``(batch, in_channels, h, w)`` at ``timestep``.

        :param encoder_hidden_states: the language model's states ``(batch, S, dim)``.
        :param encoder_hidden_states_1: the second text encoder's states ``(batch, S2, dim_1)``
            (default: ``encoder_hidden_states``).
        :param encoder_attention_mask: / ``encoder_attention_mask_1``: ``(batch, seq)``, 1 keep, 0 discard.
        :param cross_attention_kwargs: accepted for the common UNet signature; unused (as in Diffusers).
        """
        dtype = sample.dtype
        forward_upsample_size = any(s % 2**self.num_upsamplers != 0 for s in sample.shape[-2:])
        states_1 = encoder_hidden_states_1 if encoder_hidden_states_1 is not None else encoder_hidden_states
        ctx = _Context(
            encoder_hidden_states,
            _bias(encoder_attention_mask, dtype),
            states_1,
            _bias(encoder_attention_mask_1, dtype),
            _bias(attention_mask, dtype),
        )
        emb = self._embedding(sample, timestep, timestep_cond, class_labels)
        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if block.has_cross_attention:
                sample, states = block(sample, emb, ctx)
            else:
                sample, states = block(sample, emb)
            skips += states
        sample = self.mid_block(sample, emb, ctx)
        upsample_size: tuple[int, ...] | None = None
        for i, block in enumerate(self.up_blocks):
            n_res = len(block.resnets)  # type: ignore[arg-type]
            res, skips = skips[-n_res:], skips[:-n_res]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = tuple(skips[-1].shape[2:])
            if block.has_cross_attention:
                sample = block(sample, res, emb, ctx, upsample_size)
            else:
                sample = block(sample, res, emb, upsample_size)
        sample = self._output_head(sample)
        if not return_dict:
            return (sample,)
        return UNet2DConditionOutput(sample=sample)
