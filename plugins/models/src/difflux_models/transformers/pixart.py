"""``PixArtTransformer2DModel``: the text-conditioned latent transformer of PixArt-alpha / -sigma."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from difflux.modeling import ModelMixin

from ..layers.attention import AttentionProcessorMixin
from ..layers.transformer_2d import mask_to_bias
from ._patched import (
    LEGACY_TRANSFORMER_2D_KEYS,
    PatchedTransformerMixin,
    Transformer2DModelOutput,
    default_interpolation_scale,
)

__all__ = ["PixArtTransformer2DModel"]


class PixArtTransformer2DModel(ModelMixin, AttentionProcessorMixin, PatchedTransformerMixin):
    """PixArt: patch tokens, blocks modulated by one shared adaLN (``adaln_single``), cross-attention to
    projected captions (``caption_projection``).

    With ``use_additional_conditions`` (default: on when ``sample_size == 128``, i.e. PixArt-alpha 1024px)
    the forward needs ``added_cond_kwargs={"resolution": (batch, 2), "aspect_ratio": (batch, 1)}``.
    """

    _no_split_modules = ("BasicTransformerBlock", "PatchEmbed")

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        out_channels: int | None = 8,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = 1152,
        attention_bias: bool = True,
        sample_size: int = 128,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: int | None = 1000,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_single",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-6,
        interpolation_scale: int | float | None = None,
        use_additional_conditions: bool | None = None,
        caption_channels: int | None = None,
        attention_type: str | None = "default",
    ) -> None:
        super().__init__()
        if norm_type != "ada_norm_single":
            raise ValueError(f"PixArtTransformer2DModel: norm_type must be 'ada_norm_single', got {norm_type!r}")
        if attention_type not in (None, "default"):
            raise ValueError(f"PixArtTransformer2DModel: attention_type {attention_type!r} is not supported")
        self.attention_head_dim = attention_head_dim
        self.height = self.width = sample_size
        self._init_patched(
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            out_channels=in_channels if out_channels is None else out_channels,
            num_layers=num_layers,
            sample_size=sample_size,
            patch_size=patch_size,
            interpolation_scale=default_interpolation_scale(sample_size, interpolation_scale),
            norm_type=norm_type,
            block_kwargs={
                "dropout": dropout,
                "cross_attention_dim": cross_attention_dim,
                "activation_fn": activation_fn,
                "num_embeds_ada_norm": num_embeds_ada_norm,
                "attention_bias": attention_bias,
                "upcast_attention": upcast_attention,
                "norm_elementwise_affine": norm_elementwise_affine,
                "norm_eps": norm_eps,
            },
            use_additional_conditions=(
                sample_size == 128 if use_additional_conditions is None else use_additional_conditions
            ),
            caption_channels=caption_channels,
        )

    @classmethod
    def _quiet_config_keys(cls, config: Mapping[str, Any]) -> frozenset[str]:
        # A PixArt checkpoint saved as Diffusers' legacy ``Transformer2DModel`` carries its extra keys.
        return LEGACY_TRANSFORMER_2D_KEYS if config.get("_class_name") == "Transformer2DModel" else frozenset()

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor | None] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Denoise latents ``(batch, in_channels, h, w)`` given caption embeddings and a timestep.

        ``encoder_attention_mask`` may be a ``(batch, tokens)`` keep-mask (1 keep, 0 drop) or an
        additive bias ``(batch, 1, tokens)``.
        """
        out = self._forward_patched(
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            timestep=timestep,
            added_cond_kwargs=added_cond_kwargs,
            cross_attention_kwargs=cross_attention_kwargs,
            attention_mask=mask_to_bias(attention_mask, hidden_states.dtype),
            encoder_attention_mask=mask_to_bias(encoder_attention_mask, hidden_states.dtype),
        )
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
