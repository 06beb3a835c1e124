"""``ControlNetModel``: a trainable copy of a UNet's encoder that turns a condition image into residuals.

ControlNet (Zhang, Rao and Agrawala, *Adding Conditional Control to Text-to-Image Diffusion Models*,
2023, arXiv:2302.05543) copies the down blocks and mid block of a Stable Diffusion UNet, adds the
encoded condition image to the copy's input, and reads every skip state through a zero
convolution. The outputs (``down_block_res_samples``, ``mid_block_res_sample``) are added to the
frozen UNet's skip connections and mid-block output
(``UNet2DConditionModel(down_block_additional_residuals=..., mid_block_additional_residual=...)``).

Config keys and state-dict keys are Diffusers', so published ControlNet folders (SD 1.5, SD 2.x,
SDXL) load as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from difflux.modeling import ModelMixin
from difflux.outputs import BaseOutput
from difflux_models.controlnet_blocks import ControlNetConditioningEmbedding, zero_conv
from difflux_models.layers.attention import AttentionProcessorMixin
from difflux_models.layers.conditioning import TextImageProjection, TextImageTimeEmbedding, TextTimeEmbedding
from difflux_models.layers.embeddings import TimestepEmbedding, Timesteps, class_embedding
from difflux_models.unet_2d_blocks import BlockOptions, get_down_block, get_mid_block
from difflux_models.unet_2d_condition import UNet2DConditionModel, timesteps_tensor
from torch import nn

__all__ = ["ControlNetModel", "ControlNetOutput"]


@dataclasses.dataclass
class ControlNetOutput(BaseOutput):
    """The residuals a ControlNet adds to a UNet.

    ``down_block_res_samples``: one tensor per UNet skip state (``1 + sum(layers + downsample)``
    of them), each ``(batch, channels_i, h_i, w_i)``; ``mid_block_res_sample``:
    ``(batch, block_out_channels[-1], h / 2**(n-1), w / 2**(n-1))``. With
    ``global_pool_conditions`` every tensor is averaged to ``(..., 1, 1)``.
    """

    down_block_res_samples: tuple[torch.Tensor, ...]
    mid_block_res_sample: torch.Tensor


def _per_block(value: Any, n: int, name: str) -> tuple[Any, ...]:
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"ControlNetModel: {name} has {len(value)} entries but there are {n} down blocks")
        return tuple(value)
    return (value,) * n


def unet_encoder_config(c: Any) -> dict[str, Any]:
    """The config keys a ControlNet copies from a UNet's config ``c`` to take over its encoder layout
    (``from_unet`` of :class:`ControlNetModel` and the Union model)."""
    keys = (
        "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
        "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
        "norm_num_groups", "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
        "use_linear_projection", "class_embed_type", "num_class_embeds", "upcast_attention",
        "resnet_time_scale_shift", "projection_class_embeddings_input_dim",
    )  # fmt: skip
    return {
        "addition_embed_type": c.get("addition_embed_type"),
        "addition_time_embed_dim": c.get("addition_time_embed_dim"),
        "transformer_layers_per_block": c.get("transformer_layers_per_block", 1),
        **{key: getattr(c, key) for key in keys},
    }


class ControlNetModel(ModelMixin, AttentionProcessorMixin):
    """A ControlNet (Diffusers' ``ControlNetModel`` format); see the module docstring for the method.

    Config keys are Diffusers' (``attention_head_dim`` is the number of heads when
    ``num_attention_heads`` is not set, as in ``UNet2DConditionModel``). SDXL ControlNets use
    ``addition_embed_type="text_time"`` and need ``added_cond_kwargs`` with ``text_embeds`` and
    ``time_ids``.

    :raises ValueError: for a config whose lists do not match ``down_block_types`` or that names an
        unknown block, embedding or channel-order type.
    """

    _no_split_modules = ("BasicTransformerBlock", "ResnetBlock2D")

    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ) -> None:
        super().__init__()
        n = len(down_block_types)
        if len(block_out_channels) != n:
            raise ValueError(
                f"ControlNetModel: block_out_channels has {len(block_out_channels)} entries but down_block_types "
                f"has {n}; give one width per down block"
            )
        if controlnet_conditioning_channel_order not in ("rgb", "bgr"):
            raise ValueError(
                f"ControlNetModel: controlnet_conditioning_channel_order must be 'rgb' or 'bgr', "
                f"got {controlnet_conditioning_channel_order!r}"
            )
        heads = _per_block(num_attention_heads or attention_head_dim, n, "num_attention_heads")
        head_dims = _per_block(attention_head_dim, n, "attention_head_dim")
        only_cross = _per_block(only_cross_attention, n, "only_cross_attention")
        t_layers = _per_block(transformer_layers_per_block, n, "transformer_layers_per_block")

        # -- input and embeddings (created in Diffusers' order: seeded builds match) --
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)

        if encoder_hid_dim_type is None and encoder_hid_dim is not None:
            encoder_hid_dim_type = "text_proj"
            self.register_to_config(encoder_hid_dim_type=encoder_hid_dim_type)
        if encoder_hid_dim is None and encoder_hid_dim_type is not None:
            raise ValueError(f"ControlNetModel: encoder_hid_dim_type={encoder_hid_dim_type!r} needs encoder_hid_dim")
        self.encoder_hid_proj: nn.Module | None = None
        if encoder_hid_dim_type == "text_proj":
            self.encoder_hid_proj = nn.Linear(encoder_hid_dim, cross_attention_dim)  # type: ignore[arg-type]
        elif encoder_hid_dim_type == "text_image_proj":
            self.encoder_hid_proj = TextImageProjection(
                text_embed_dim=encoder_hid_dim,  # type: ignore[arg-type]
                image_embed_dim=cross_attention_dim,
                cross_attention_dim=cross_attention_dim,
            )
        elif encoder_hid_dim_type is not None:
            raise ValueError(
                f"ControlNetModel: encoder_hid_dim_type must be None, 'text_proj' or 'text_image_proj', "
                f"got {encoder_hid_dim_type!r}"
            )

        self.class_embedding = class_embedding(
            class_embed_type,
            num_class_embeds=num_class_embeds,
            timestep_input_dim=block_out_channels[0],
            time_embed_dim=time_embed_dim,
            projection_input_dim=projection_class_embeddings_input_dim,
            allow_projection=class_embed_type == "projection",
        )

        self.add_embedding: nn.Module | None = None
        if addition_embed_type == "text":
            text_dim = encoder_hid_dim if encoder_hid_dim is not None else cross_attention_dim
            self.add_embedding = TextTimeEmbedding(text_dim, time_embed_dim, num_heads=addition_embed_type_num_heads)
        elif addition_embed_type == "text_image":
            self.add_embedding = TextImageTimeEmbedding(cross_attention_dim, cross_attention_dim, time_embed_dim)
        elif addition_embed_type == "text_time":
            if addition_time_embed_dim is None or projection_class_embeddings_input_dim is None:
                raise ValueError(
                    "ControlNetModel: addition_embed_type='text_time' needs addition_time_embed_dim and "
                    "projection_class_embeddings_input_dim"
                )
            self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
            self.add_embedding = TimestepEmbedding(projection_class_embeddings_input_dim, time_embed_dim)
        elif addition_embed_type is not None:
            raise ValueError(
                f"ControlNetModel: addition_embed_type must be None, 'text', 'text_image' or 'text_time', "
                f"got {addition_embed_type!r}"
            )

        self.controlnet_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=block_out_channels[0],
            block_out_channels=conditioning_embedding_out_channels or (16, 32, 96, 256),
            conditioning_channels=conditioning_channels,
        )

        # -- the copied encoder, each block followed by its zero convolutions --
        base = BlockOptions(
            num_layers=layers_per_block,
            temb_channels=time_embed_dim,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups if norm_num_groups is not None else 32,
            resnet_time_scale_shift=resnet_time_scale_shift,
            downsample_padding=downsample_padding,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            cross_attention_dim=cross_attention_dim,
        )
        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([zero_conv(block_out_channels[0])])
        for i, block_type in enumerate(down_block_types):
            out_ch = block_out_channels[i]
            last = i == n - 1
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    in_channels=block_out_channels[max(i - 1, 0)],
                    out_channels=out_ch,
                    add_downsample=not last,
                    options=dataclasses.replace(
                        base,
                        transformer_layers_per_block=t_layers[i],
                        num_attention_heads=heads[i],
                        attention_head_dim=head_dims[i] if head_dims[i] is not None else out_ch,
                        only_cross_attention=only_cross[i],
                    ),
                )
            )
            for _ in range(layers_per_block + (0 if last else 1)):
                self.controlnet_down_blocks.append(zero_conv(out_ch))

        self.controlnet_mid_block = zero_conv(block_out_channels[-1])
        if mid_block_type not in ("UNetMidBlock2DCrossAttn", "UNetMidBlock2D"):
            raise ValueError(
                f"ControlNetModel: mid_block_type must be 'UNetMidBlock2DCrossAttn' or 'UNetMidBlock2D', "
                f"got {mid_block_type!r}"
            )
        self.mid_block = get_mid_block(
            mid_block_type,
            in_channels=block_out_channels[-1],
            options=dataclasses.replace(
                base,
                num_layers=1,
                output_scale_factor=mid_block_scale_factor,
                transformer_layers_per_block=t_layers[-1],
                num_attention_heads=heads[-1],
                attention_head_dim=head_dims[-1],
            ),
        )

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
        conditioning_channels: int = 3,
    ) -> ControlNetModel:
        """A ControlNet with ``unet``'s encoder layout and (by default) a copy of its encoder weights.

        The conditioning embedding and zero convolutions start fresh (zeros at the output), so the
        new ControlNet adds exactly zero until trained.
        """
        c = unet.config
        controlnet = cls(
            **unet_encoder_config(c),
            encoder_hid_dim=c.get("encoder_hid_dim"),
            encoder_hid_dim_type=c.get("encoder_hid_dim_type"),
            mid_block_type=c.mid_block_type,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            conditioning_channels=conditioning_channels,
        )
        if load_weights_from_unet:
            names = ["conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block"]
            if controlnet.class_embedding is not None:
                names.append("class_embedding")
            if controlnet.add_embedding is not None:
                names.append("add_embedding")
            for name in names:
                getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict())
        return controlnet

    def _embedding(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        timestep_cond: torch.Tensor | None,
        class_labels: torch.Tensor | None,
        added_cond_kwargs: dict[str, torch.Tensor] | None,
        before_added: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The time embedding (plus class and added embeddings); ``before_added(emb)`` adds a term before the
        added (text / SDXL) embedding, as Union's control-type embedding is."""
        t_emb = self.time_proj(timesteps_tensor(timestep, sample)).to(dtype=sample.dtype)
        emb: torch.Tensor = self.time_embedding(t_emb, timestep_cond)
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("ControlNetModel: this ControlNet has a class embedding; pass class_labels")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels)
            emb = emb + self.class_embedding(class_labels).to(dtype=self.dtype)
        if before_added is not None:
            emb = before_added(emb)
        kind = self.config.addition_embed_type
        if kind == "text" and self.add_embedding is not None:
            emb = emb + self.add_embedding(encoder_hidden_states)
        elif kind == "text_time" and self.add_embedding is not None:
            extra = added_cond_kwargs or {}
            missing = [k for k in ("text_embeds", "time_ids") if k not in extra]
            if missing:
                raise ValueError(
                    "ControlNetModel: this ControlNet has addition_embed_type='text_time' (SDXL); pass "
                    f"{' and '.join(missing)} in added_cond_kwargs"
                )
            text_embeds = extra["text_embeds"]
            time_embeds = self.add_time_proj(extra["time_ids"].flatten()).reshape(text_embeds.shape[0], -1)
            emb = emb + self.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
        return emb

    def _encode(
        self,
        sample: torch.Tensor,
        emb: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cross_attention_kwargs: dict[str, Any] | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The copied encoder on the conditioned input ``sample``: the zero-convolved skip states and mid state."""
        attn_kwargs: dict[str, Any] = {
            "encoder_hidden_states": encoder_hidden_states,
            "attention_mask": attention_mask,
            "cross_attention_kwargs": cross_attention_kwargs,
        }
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, states = block(sample, emb, **attn_kwargs)
            else:
                sample, states = block(sample, emb)
            skips += states
        if self.mid_block is not None:
            if getattr(self.mid_block, "has_cross_attention", False):
                sample = self.mid_block(sample, emb, **attn_kwargs)
            else:
                sample = self.mid_block(sample, emb)
        down = [conv(s) for s, conv in zip(skips, self.controlnet_down_blocks, strict=True)]
        mid: torch.Tensor = self.controlnet_mid_block(sample)
        return down, mid

    def _scale(
        self, down: list[torch.Tensor], mid: torch.Tensor, scale: float, guess_mode: bool
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals times ``scale`` (log-spaced 0.1 .. 1 across depth in guess mode), pooled with
        ``global_pool_conditions``."""
        pooled = self.config.global_pool_conditions
        if guess_mode and not pooled:
            scales = torch.logspace(-1, 0, len(down) + 1, device=mid.device) * scale
            down = [s * w for s, w in zip(down, scales, strict=False)]
            mid = mid * scales[-1]
        else:
            down = [s * scale for s in down]
            mid = mid * scale
        if pooled:
            down = [s.mean(dim=(2, 3), keepdim=True) for s in down]
            mid = mid.mean(dim=(2, 3), keepdim=True)
        return down, mid

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: torch.Tensor,
        conditioning_scale: float = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> ControlNetOutput | tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The control residuals for a noisy latent ``sample`` ``(batch, in_channels, h, w)`` at ``timestep``.

        :param encoder_hidden_states: ``(batch, seq, cross_attention_dim)`` text embeddings.
        :param controlnet_cond: the condition image, ``(batch, conditioning_channels, 8h, 8w)`` for the
            published layout (the conditioning embedding downsamples by ``2**(len(out_channels) - 1)``),
            values in [0, 1]; ``bgr`` checkpoints flip the channels.
        :param conditioning_scale: multiplies every residual.
        :param guess_mode: scale the residuals from 0.1 (first skip) to 1.0 (mid block) on a log
            scale, times ``conditioning_scale`` (ControlNet's "guess mode": the net must recognise
            the content without a prompt); not with ``global_pool_conditions``.
        :param attention_mask: ``(batch, seq)`` over the encoder states, 1 keep, 0 discard.
        :returns: :class:`ControlNetOutput` (or the tuple ``(down_block_res_samples, mid_block_res_sample)``).
        """
        if self.config.controlnet_conditioning_channel_order == "bgr":
            controlnet_cond = torch.flip(controlnet_cond, dims=[1])
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)
        emb = self._embedding(sample, timestep, encoder_hidden_states, timestep_cond, class_labels, added_cond_kwargs)
        if self.encoder_hid_proj is not None and self.config.encoder_hid_dim_type == "text_proj":
            encoder_hidden_states = self.encoder_hid_proj(encoder_hidden_states)

        sample = self.conv_in(sample) + self.controlnet_cond_embedding(controlnet_cond)
        down, mid = self._encode(sample, emb, encoder_hidden_states, attention_mask, cross_attention_kwargs)
        down, mid = self._scale(down, mid, conditioning_scale, guess_mode)
        if not return_dict:
            return (tuple(down), mid)
        return ControlNetOutput(down_block_res_samples=tuple(down), mid_block_res_sample=mid)
