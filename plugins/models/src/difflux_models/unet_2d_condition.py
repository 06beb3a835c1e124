"""``UNet2DConditionModel``: the text-conditioned UNet of Stable Diffusion 1.x / 2.x, SDXL and LCM."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from difflux.modeling import ModelMixin
from difflux.outputs import BaseOutput
from torch import nn

from .layers.activations import get_activation
from .layers.attention import AttentionProcessorMixin
from .layers.conditioning import (
    ImageHintTimeEmbedding,
    ImageProjection,
    ImageTimeEmbedding,
    TextImageProjection,
    TextImageTimeEmbedding,
    TextTimeEmbedding,
)
from .layers.embeddings import (
    GaussianFourierProjection,
    GLIGENTextBoundingboxProjection,
    TimestepEmbedding,
    Timesteps,
    class_embedding,
)
from .unet_2d_blocks import (
    BlockOptions,
    OutputHeadMixin,
    build_down_blocks,
    build_up_blocks,
    get_mid_block,
)

__all__ = ["UNet2DConditionModel", "UNet2DConditionOutput"]


@dataclasses.dataclass
class UNet2DConditionOutput(BaseOutput):
    """The predicted noise (or sample / velocity), shaped like the input ``sample``."""

    sample: torch.Tensor


def _per_block(value: Any, n: int, name: str) -> tuple[Any, ...]:
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries but the UNet has {n} down blocks")
        return tuple(value)
    return (value,) * n


def timesteps_tensor(timestep: torch.Tensor | float | int, sample: torch.Tensor) -> torch.Tensor:
    """Timesteps as a 1-d tensor with one entry per sample (scalars broadcast)."""
    if not isinstance(timestep, torch.Tensor):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        if sample.device.type == "mps":
            dtype = torch.float32 if dtype == torch.float64 else torch.int32
        timestep = torch.tensor([timestep], dtype=dtype, device=sample.device)
    elif timestep.ndim == 0:
        timestep = timestep[None].to(sample.device)
    return timestep.expand(sample.shape[0])


#: the ``added_cond_kwargs`` each ``addition_embed_type`` needs
_ADDED_COND_KEYS: dict[str, tuple[str, ...]] = {
    "text_time": ("text_embeds", "time_ids"),
    "text_image": ("image_embeds",),
    "image": ("image_embeds",),
    "image_hint": ("image_embeds", "hint"),
}


class UNet2DConditionModel(ModelMixin, AttentionProcessorMixin, OutputHeadMixin):
    """A UNet whose attention blocks read ``encoder_hidden_states`` (text embeddings).

    The config keys are Diffusers' (``attention_head_dim`` is, for historical reasons, the number
    of heads when ``num_attention_heads`` is not set).
    """

    _no_split_modules = ("BasicTransformerBlock", "ResnetBlock2D", "CrossAttnUpBlock2D")

    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
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
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple[int, ...] | tuple[tuple[int, ...], ...] = 1,
        reverse_transformer_layers_per_block: tuple[tuple[int, ...], ...] | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
    ) -> None:
        super().__init__()
        n = len(down_block_types)
        if len(up_block_types) != n or len(block_out_channels) != n:
            raise ValueError(
                f"down_block_types ({n}), up_block_types ({len(up_block_types)}) and block_out_channels "
                f"({len(block_out_channels)}) must have the same length"
            )
        if dual_cross_attention:
            raise ValueError("dual_cross_attention is not supported by difflux's UNet2DConditionModel")
        if attention_type not in ("default", "gated", "gated-text-image"):
            raise ValueError(
                f"attention_type {attention_type!r} is not supported; expected 'default', 'gated' or "
                "'gated-text-image' (GLIGEN)"
            )
        if norm_num_groups is None:
            plain = [t for t in (*down_block_types, *up_block_types) if not t.startswith("K")]
            if plain or mid_block_type is not None:
                raise ValueError(
                    "norm_num_groups=None needs K-diffusion blocks only (KDownBlock2D, KCrossAttnDownBlock2D, "
                    f"KUpBlock2D, KCrossAttnUpBlock2D) and mid_block_type=None; got {plain or [mid_block_type]}"
                )
        heads = _per_block(num_attention_heads or attention_head_dim, n, "num_attention_heads")
        head_dims = _per_block(attention_head_dim, n, "attention_head_dim")
        cross_dims = _per_block(cross_attention_dim, n, "cross_attention_dim")
        layers = _per_block(layers_per_block, n, "layers_per_block")
        t_layers = _per_block(transformer_layers_per_block, n, "transformer_layers_per_block")
        mid_only_cross = mid_block_only_cross_attention
        if mid_only_cross is None:
            mid_only_cross = only_cross_attention if isinstance(only_cross_attention, bool) else False
        if isinstance(only_cross_attention, bool):
            only_cross = (only_cross_attention,) * n
        else:
            only_cross = _per_block(only_cross_attention, n, "only_cross_attention")

        # -- input and embeddings --
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], conv_in_kernel, padding=(conv_in_kernel - 1) // 2)
        self.time_proj: nn.Module
        if time_embedding_type == "fourier":
            time_embed_dim = time_embedding_dim or block_out_channels[0] * 2
            self.time_proj = GaussianFourierProjection(
                time_embed_dim // 2, set_W_to_weight=False, log=False, flip_sin_to_cos=flip_sin_to_cos
            )
            timestep_input_dim = time_embed_dim
        elif time_embedding_type == "positional":
            time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
            self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
            timestep_input_dim = block_out_channels[0]
        else:
            raise ValueError(f"unknown time_embedding_type {time_embedding_type!r}; expected 'positional' or 'fourier'")
        self.time_embedding = TimestepEmbedding(
            timestep_input_dim,
            time_embed_dim,
            act_fn=act_fn,
            post_act_fn=timestep_post_act,
            cond_proj_dim=time_cond_proj_dim,
        )

        if encoder_hid_dim_type is None and encoder_hid_dim is not None:
            encoder_hid_dim_type = "text_proj"
            self.register_to_config(encoder_hid_dim_type=encoder_hid_dim_type)
        self.encoder_hid_proj: nn.Module | None = None
        if encoder_hid_dim_type is not None:
            if encoder_hid_dim is None or not isinstance(cross_attention_dim, int):
                raise ValueError(
                    f"encoder_hid_dim_type={encoder_hid_dim_type!r} needs encoder_hid_dim and an int "
                    "cross_attention_dim"
                )
            if encoder_hid_dim_type == "text_proj":
                self.encoder_hid_proj = nn.Linear(encoder_hid_dim, cross_attention_dim)
            elif encoder_hid_dim_type == "text_image_proj":
                self.encoder_hid_proj = TextImageProjection(
                    text_embed_dim=encoder_hid_dim,
                    image_embed_dim=cross_attention_dim,
                    cross_attention_dim=cross_attention_dim,
                )
            elif encoder_hid_dim_type == "image_proj":
                self.encoder_hid_proj = ImageProjection(
                    image_embed_dim=encoder_hid_dim, cross_attention_dim=cross_attention_dim
                )
            else:
                raise ValueError(
                    f"unknown encoder_hid_dim_type {encoder_hid_dim_type!r}; expected 'text_proj', "
                    "'text_image_proj' or 'image_proj'"
                )

        self.class_embedding = class_embedding(
            class_embed_type,
            num_class_embeds=num_class_embeds,
            timestep_input_dim=timestep_input_dim,
            time_embed_dim=time_embed_dim,
            act_fn=act_fn,
            projection_input_dim=projection_class_embeddings_input_dim,
            allow_projection=True,
        )

        self.add_embedding: nn.Module
        if addition_embed_type == "text_time":
            if addition_time_embed_dim is None or projection_class_embeddings_input_dim is None:
                raise ValueError(
                    "addition_embed_type='text_time' needs addition_time_embed_dim and "
                    "projection_class_embeddings_input_dim"
                )
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        elif addition_embed_type == "text":
            text_dim = encoder_hid_dim if encoder_hid_dim is not None else cross_attention_dim
            if not isinstance(text_dim, int):
                raise ValueError("addition_embed_type='text' needs encoder_hid_dim or an int cross_attention_dim")
            self.add_embedding = TextTimeEmbedding(text_dim, time_embed_dim, num_heads=addition_embed_type_num_heads)
        elif addition_embed_type == "text_image":
            if not isinstance(cross_attention_dim, int):
                raise ValueError("addition_embed_type='text_image' needs an int cross_attention_dim")
            self.add_embedding = TextImageTimeEmbedding(cross_attention_dim, cross_attention_dim, time_embed_dim)
        elif addition_embed_type in ("image", "image_hint"):
            if encoder_hid_dim is None:
                raise ValueError(f"addition_embed_type={addition_embed_type!r} needs encoder_hid_dim")
            make = ImageTimeEmbedding if addition_embed_type == "image" else ImageHintTimeEmbedding
            self.add_embedding = make(image_embed_dim=encoder_hid_dim, time_embed_dim=time_embed_dim)
        elif addition_embed_type is not None:
            raise ValueError(
                f"unknown addition_embed_type {addition_embed_type!r}; expected 'text', 'text_image', "
                "'text_time', 'image' or 'image_hint'"
            )
        self.time_embed_act = get_activation(time_embedding_act_fn) if time_embedding_act_fn is not None else None

        # -- blocks --
        blocks_temb = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim
        base = BlockOptions(
            temb_channels=blocks_temb,
            dropout=dropout,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups if norm_num_groups is not None else 32,  # K blocks: 32 per group
            resnet_time_scale_shift=resnet_time_scale_shift,
            downsample_padding=downsample_padding,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            resnet_skip_time_act=resnet_skip_time_act,
            resnet_out_scale_factor=resnet_out_scale_factor,
            cross_attention_norm=cross_attention_norm,
            attention_type=attention_type,
        )
        self.down_blocks = build_down_blocks(
            down_block_types,
            block_out_channels,
            lambda i, out_ch: dataclasses.replace(
                base,
                num_layers=layers[i],
                transformer_layers_per_block=t_layers[i],
                cross_attention_dim=cross_dims[i],
                num_attention_heads=heads[i],
                attention_head_dim=head_dims[i] if head_dims[i] is not None else out_ch,
                only_cross_attention=only_cross[i],
            ),
        )

        self.up_blocks = nn.ModuleList()  # registered before the mid block, built after it (Diffusers' order)
        mid_layers = t_layers[-1]
        self.mid_block = get_mid_block(
            mid_block_type,
            in_channels=block_out_channels[-1],
            options=dataclasses.replace(
                base,
                num_layers=1,
                output_scale_factor=mid_block_scale_factor,
                transformer_layers_per_block=mid_layers,
                num_attention_heads=heads[-1],
                cross_attention_dim=cross_dims[-1],
                attention_head_dim=head_dims[-1],
                # read by the simple-cross-attention mid block only (Diffusers' cross-attention one ignores it)
                only_cross_attention=mid_only_cross,
            ),
        )

        rev_heads = list(reversed(heads))
        rev_layers = list(reversed(layers))
        rev_cross = list(reversed(cross_dims))
        rev_t_layers: list[Any] = (
            list(reversed(t_layers))
            if reverse_transformer_layers_per_block is None
            else list(reverse_transformer_layers_per_block)
        )
        rev_only_cross = list(reversed(only_cross))
        self.up_blocks.extend(
            build_up_blocks(
                up_block_types,
                block_out_channels,
                lambda i, out_ch: dataclasses.replace(
                    base,
                    num_layers=rev_layers[i] + 1,
                    transformer_layers_per_block=rev_t_layers[i],
                    cross_attention_dim=rev_cross[i],
                    num_attention_heads=rev_heads[i],
                    # Diffusers indexes attention_head_dim un-reversed here; kept for checkpoint compatibility.
                    attention_head_dim=head_dims[i] if head_dims[i] is not None else out_ch,
                    only_cross_attention=rev_only_cross[i],
                ),
            )
        )
        self.num_upsamplers = n - 1

        self._init_output_head(
            block_out_channels[0],
            out_channels,
            groups=norm_num_groups,
            eps=norm_eps,
            act_fn=act_fn,
            kernel_size=conv_out_kernel,
        )
        if attention_type != "default":  # GLIGEN: grounding tokens from phrases (and images) and boxes
            positive_len = cross_attention_dim if isinstance(cross_attention_dim, int) else cross_attention_dim[0]
            self.position_net = GLIGENTextBoundingboxProjection(
                positive_len=positive_len,
                out_dim=cross_attention_dim,
                feature_type="text-only" if attention_type == "gated" else "text-image",
            )

    # -- forward steps ---------------------------------------------------------------------------

    def _time_embedding(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        timestep_cond: torch.Tensor | None,
        class_labels: torch.Tensor | None,
        added_cond_kwargs: dict[str, torch.Tensor] | None,
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The embedding the blocks get, and the encoded hint image (``image_hint`` only)."""
        t_emb = self.time_proj(timesteps_tensor(timestep, sample)).to(dtype=sample.dtype)
        emb: torch.Tensor = self.time_embedding(t_emb, timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this UNet has a class embedding: pass class_labels")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels).to(dtype=sample.dtype)
            class_emb = self.class_embedding(class_labels).to(dtype=sample.dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if self.config.class_embeddings_concat else emb + class_emb
        hint: torch.Tensor | None = None
        kind = self.config.addition_embed_type
        if kind is not None:
            extra = added_cond_kwargs or {}
            needed = _ADDED_COND_KEYS.get(kind, ())
            missing = [k for k in needed if k not in extra]
            if missing:
                raise ValueError(
                    f"this UNet has addition_embed_type={kind!r}: pass {' and '.join(missing)} in added_cond_kwargs"
                )
            if kind == "text_time":
                text_embeds, time_ids = extra["text_embeds"], extra["time_ids"]
                time_embeds = self.add_time_proj(time_ids.flatten()).reshape(text_embeds.shape[0], -1)
                add_embeds = torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype)
                emb = emb + self.add_embedding(add_embeds)
            elif kind == "text":
                emb = emb + self.add_embedding(encoder_hidden_states)
            elif kind == "text_image":
                text = extra.get("text_embeds", encoder_hidden_states)
                emb = emb + self.add_embedding(text, extra["image_embeds"])
            elif kind == "image":
                emb = emb + self.add_embedding(extra["image_embeds"])
            else:  # image_hint
                aug, hint = self.add_embedding(extra["image_embeds"], extra["hint"])
                emb = emb + aug
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)
        return emb, hint

    def _encoder_states(
        self, encoder_hidden_states: torch.Tensor, added_cond_kwargs: dict[str, torch.Tensor] | None
    ) -> torch.Tensor:
        """The encoder states through ``encoder_hid_proj`` (by ``encoder_hid_dim_type``)."""
        kind = self.config.encoder_hid_dim_type
        if self.encoder_hid_proj is None:
            return encoder_hidden_states
        if kind == "text_proj":
            out: torch.Tensor = self.encoder_hid_proj(encoder_hidden_states)
            return out
        image_embeds = (added_cond_kwargs or {}).get("image_embeds")
        if image_embeds is None:
            raise ValueError(f"this UNet has encoder_hid_dim_type={kind!r}: pass image_embeds in added_cond_kwargs")
        if kind == "text_image_proj":
            out = self.encoder_hid_proj(encoder_hidden_states, image_embeds)
        else:
            out = self.encoder_hid_proj(image_embeds)
        return out

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: tuple[torch.Tensor, ...] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DConditionOutput | tuple[torch.Tensor]:
        """Predict from a noisy ``sample`` ``(batch, in_channels, h, w)`` at ``timestep``.

        ``attention_mask`` / ``encoder_attention_mask``: ``(batch, seq)``, 1 keep, 0 discard.
        ``down_block_additional_residuals`` and ``mid_block_additional_residual`` (ControlNet) are
        added to the skip connections and the mid-block output; ``down_intrablock_additional_residuals``
        (T2I-Adapter) are added inside the down blocks. ``cross_attention_kwargs["scale"]`` is a LoRA
        weight (no effect without LoRA layers).
        """
        up_factor = 2**self.num_upsamplers
        forward_upsample_size = any(s % up_factor != 0 for s in sample.shape[-2:])
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if encoder_attention_mask is not None:
            encoder_attention_mask = ((1 - encoder_attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        emb, hint = self._time_embedding(
            sample, timestep, timestep_cond, class_labels, added_cond_kwargs, encoder_hidden_states
        )
        if hint is not None:
            sample = torch.cat([sample, hint], dim=1)
        encoder_hidden_states = self._encoder_states(encoder_hidden_states, added_cond_kwargs)
        sample = self.conv_in(sample)
        if cross_attention_kwargs is not None and cross_attention_kwargs.get("gligen") is not None:
            position_net = getattr(self, "position_net", None)
            if position_net is None:
                raise ValueError(
                    "cross_attention_kwargs['gligen'] needs a UNet built with attention_type='gated' or "
                    "'gated-text-image' (GLIGEN)"
                )
            # the boxes and phrase embeddings become grounding tokens the transformer blocks' fusers read
            objs = position_net(**cross_attention_kwargs["gligen"])
            cross_attention_kwargs = {**cross_attention_kwargs, "gligen": {"objs": objs}}

        is_controlnet = mid_block_additional_residual is not None and down_block_additional_residuals is not None
        adapter = list(down_intrablock_additional_residuals or ())
        if not is_controlnet and down_block_additional_residuals is not None and not adapter:
            adapter = list(down_block_additional_residuals)  # the older T2I-Adapter calling convention
        attn_kwargs: dict[str, Any] = {
            "encoder_hidden_states": encoder_hidden_states,
            "attention_mask": attention_mask,
            "cross_attention_kwargs": cross_attention_kwargs,
            "encoder_attention_mask": encoder_attention_mask,
        }

        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if block.has_cross_attention:
                extra = {"additional_residuals": adapter.pop(0)} if adapter else {}
                sample, states = block(sample, emb, **attn_kwargs, **extra)
            else:
                sample, states = block(sample, emb)
                if adapter:  # added to the block output, which is also its last skip state
                    sample = sample + adapter.pop(0)
                    states = (*states[:-1], sample)
            skips += states
        if is_controlnet:
            if down_block_additional_residuals is None:
                raise RuntimeError(
                    "UNet2DConditionModel.forward: internal check failed: down_block_additional_residuals is not None"
                )
            skips = tuple(s + r for s, r in zip(skips, down_block_additional_residuals, strict=True))

        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(sample, emb, **attn_kwargs)
            else:
                sample = self.mid_block(sample, emb)
            if adapter and sample.shape == adapter[0].shape:
                sample = sample + adapter.pop(0)
        if mid_block_additional_residual is not None and is_controlnet:
            sample = sample + mid_block_additional_residual

        upsample_size: tuple[int, int] | None = None
        for i, block in enumerate(self.up_blocks):
            n_res = len(block.resnets)  # type: ignore[arg-type]
            res, skips = skips[-n_res:], skips[:-n_res]
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = tuple(skips[-1].shape[2:])  # type: ignore[assignment]
            if block.has_cross_attention:
                sample = block(sample, res, emb, upsample_size, **attn_kwargs)
            else:
                sample = block(sample, res, emb, upsample_size)

        sample = self._output_head(sample)
        if not return_dict:
            return (sample,)
        return UNet2DConditionOutput(sample=sample)
