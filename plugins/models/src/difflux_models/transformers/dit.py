"""``DiTTransformer2DModel``: the class-conditional latent transformer of DiT (adaLN-zero)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from difflux.modeling import ModelMixin

from ..layers.attention import AttentionProcessorMixin
from ._patched import LEGACY_TRANSFORMER_2D_KEYS, PatchedTransformerMixin, Transformer2DModelOutput

__all__ = ["DiTTransformer2DModel"]


class DiTTransformer2DModel(ModelMixin, AttentionProcessorMixin, PatchedTransformerMixin):
    """DiT (Peebles & Xie, 2022): patch tokens, adaLN-zero blocks conditioned on timestep and class.

    Config keys are Diffusers' ``DiTTransformer2DModel`` ones.  Checkpoints trained with a learned
    variance (``learn_sigma``) have ``out_channels = 2 * in_channels``.
    """

    _no_split_modules = ("BasicTransformerBlock",)

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 72,
        in_channels: int = 4,
        out_channels: int | None = None,
        num_layers: int = 28,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        attention_bias: bool = True,
        sample_size: int = 32,
        patch_size: int = 2,
        activation_fn: str = "gelu-approximate",
        num_embeds_ada_norm: int | None = 1000,
        upcast_attention: bool = False,
        norm_type: str = "ada_norm_zero",
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if norm_type != "ada_norm_zero":
            raise ValueError(f"DiTTransformer2DModel: norm_type must be 'ada_norm_zero', got {norm_type!r}")
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
            interpolation_scale=1,
            norm_type=norm_type,
            block_kwargs={
                "dropout": dropout,
                "activation_fn": activation_fn,
                "num_embeds_ada_norm": num_embeds_ada_norm,
                "attention_bias": attention_bias,
                "upcast_attention": upcast_attention,
                "norm_elementwise_affine": norm_elementwise_affine,
                "norm_eps": norm_eps,
            },
        )

    @classmethod
    def _quiet_config_keys(cls, config: Mapping[str, Any]) -> frozenset[str]:
        # A DiT checkpoint saved as Diffusers' legacy ``Transformer2DModel`` carries its extra keys.
        return LEGACY_TRANSFORMER_2D_KEYS if config.get("_class_name") == "Transformer2DModel" else frozenset()

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict noise (and, with ``learn_sigma``, variance) for latents ``(batch, in_channels, h, w)``.

        ``timestep`` and ``class_labels`` are ``(batch,)`` integer tensors.
        """
        out = self._forward_patched(
            hidden_states, timestep=timestep, class_labels=class_labels, cross_attention_kwargs=cross_attention_kwargs
        )
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
