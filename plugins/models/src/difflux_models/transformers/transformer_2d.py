"""``Transformer2DModel``: Diffusers' legacy all-in-one 2D transformer, for checkpoints that name it.

One class, three input kinds, chosen by the config:

* **continuous** (``in_channels`` set, no ``patch_size``): GroupNorm, ``proj_in`` (1x1 conv, or
  linear with ``use_linear_projection``), blocks, ``proj_out``, residual;
* **patched** (``in_channels`` and ``patch_size``): the DiT / PixArt layout, run by the shared
  :class:`~difflux_models.transformers._patched.PatchedTransformerMixin`;
* **vectorized** (``num_vector_embeds``, VQ-Diffusion): token ids in, log-probabilities of the
  unmasked classes out.

Loading a folder whose ``norm_type`` is ``ada_norm_zero`` or ``ada_norm_single`` gives a
:class:`DiTTransformer2DModel` or :class:`PixArtTransformer2DModel`, as Diffusers does.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from difflux.modeling import ModelMixin
from difflux.options import LoadOptions
from torch import nn

from ..layers.attention import AttentionProcessorMixin, BasicTransformerBlock
from ..layers.transformer_2d import mask_to_bias
from ._patched import PatchedTransformerMixin, Transformer2DModelOutput, default_interpolation_scale

__all__ = ["ImagePositionalEmbeddings", "Transformer2DModel"]

#: The classes Diffusers loads a ``Transformer2DModel`` folder as, by ``norm_type``.
_REMAPPED_CLASSES = {
    "ada_norm_zero": ("difflux_models.transformers.dit", "DiTTransformer2DModel"),
    "ada_norm_single": ("difflux_models.transformers.pixart", "PixArtTransformer2DModel"),
}


class ImagePositionalEmbeddings(nn.Module):
    """Token embedding plus learned row and column embeddings (keys ``emb``, ``height_emb``, ``width_emb``)."""

    def __init__(self, num_embed: int, height: int, width: int, embed_dim: int) -> None:
        super().__init__()
        self.height, self.width = height, width
        self.emb = nn.Embedding(num_embed, embed_dim)
        self.height_emb = nn.Embedding(height, embed_dim)
        self.width_emb = nn.Embedding(width, embed_dim)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        emb = self.emb(index)
        rows = self.height_emb(torch.arange(self.height, device=index.device))[None, :, None]
        cols = self.width_emb(torch.arange(self.width, device=index.device))[None, None, :]
        pos = (rows + cols).reshape(1, self.height * self.width, -1)
        return emb + pos[:, : emb.shape[1]]  # type: ignore[no-any-return]


class Transformer2DModel(ModelMixin, AttentionProcessorMixin, PatchedTransformerMixin):
    """A 2D transformer over continuous feature maps, patched latents or discrete latent tokens.

    The config keys are those of Diffusers' ``Transformer2DModel``.
    """

    _no_split_modules = ("BasicTransformerBlock",)

    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 88,
        in_channels: int | None = None,
        out_channels: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        norm_num_groups: int = 32,
        cross_attention_dim: int | None = None,
        attention_bias: bool = False,
        sample_size: int | None = None,
        num_vector_embeds: int | None = None,
        patch_size: int | None = None,
        activation_fn: str = "geglu",
        num_embeds_ada_norm: int | None = None,
        use_linear_projection: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_type: str = "layer_norm",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        attention_type: str = "default",
        caption_channels: int | None = None,
        interpolation_scale: int | float | None = None,
        use_additional_conditions: bool | None = None,
    ) -> None:
        super().__init__()
        if attention_type != "default":
            raise ValueError(f"Transformer2DModel: attention_type {attention_type!r} is not supported")
        if norm_type == "layer_norm" and num_embeds_ada_norm is not None:
            norm_type = "ada_norm"  # old configs name the timestep norm only through num_embeds_ada_norm
        self.is_input_continuous = in_channels is not None and patch_size is None
        self.is_input_vectorized = num_vector_embeds is not None
        self.is_input_patches = in_channels is not None and patch_size is not None
        if sum((self.is_input_continuous, self.is_input_vectorized, self.is_input_patches)) != 1:
            raise ValueError(
                "Transformer2DModel: set exactly one input kind: in_channels (continuous), in_channels and "
                f"patch_size (patched), or num_vector_embeds (discrete); got in_channels={in_channels}, "
                f"patch_size={patch_size}, num_vector_embeds={num_vector_embeds}"
            )
        self.use_linear_projection = use_linear_projection
        self.num_attention_heads = num_attention_heads
        self.attention_head_dim = attention_head_dim
        self.inner_dim = inner_dim = num_attention_heads * attention_head_dim
        self.in_channels = in_channels
        self.out_channels = (in_channels if out_channels is None else out_channels) or 0
        block_kwargs: dict[str, Any] = {
            "dropout": dropout,
            "cross_attention_dim": cross_attention_dim,
            "activation_fn": activation_fn,
            "num_embeds_ada_norm": num_embeds_ada_norm,
            "attention_bias": attention_bias,
            "only_cross_attention": only_cross_attention,
            "double_self_attention": double_self_attention,
            "upcast_attention": upcast_attention,
            "norm_elementwise_affine": norm_elementwise_affine,
            "norm_eps": norm_eps,
        }

        if self.is_input_patches:
            if not (in_channels is not None and patch_size is not None):
                raise RuntimeError(
                    "Transformer2DModel.__init__: internal check failed: "
                    "in_channels is not None and patch_size is not None"
                )
            if sample_size is None:
                raise ValueError("Transformer2DModel: patched inputs need sample_size")
            self._init_patched(
                num_attention_heads=num_attention_heads,
                attention_head_dim=attention_head_dim,
                in_channels=in_channels,
                out_channels=self.out_channels,
                num_layers=num_layers,
                sample_size=sample_size,
                patch_size=patch_size,
                interpolation_scale=default_interpolation_scale(sample_size, interpolation_scale),
                norm_type=norm_type,
                block_kwargs=block_kwargs,
                use_additional_conditions=(
                    norm_type == "ada_norm_single" and sample_size == 128
                    if use_additional_conditions is None
                    else use_additional_conditions
                ),
                caption_channels=caption_channels,
            )
            return

        def make_blocks() -> nn.ModuleList:
            return nn.ModuleList(
                BasicTransformerBlock(
                    inner_dim, num_attention_heads, attention_head_dim, norm_type=norm_type, **block_kwargs
                )
                for _ in range(num_layers)
            )

        # Diffusers' creation (and registration) order: input layers, blocks, output layers
        self.proj_in: nn.Module
        if self.is_input_continuous:
            if in_channels is None:
                raise RuntimeError("Transformer2DModel.__init__: internal check failed: in_channels is not None")
            self.norm = nn.GroupNorm(num_groups=norm_num_groups, num_channels=in_channels, eps=1e-6, affine=True)
            linear = use_linear_projection
            self.proj_in = nn.Linear(in_channels, inner_dim) if linear else nn.Conv2d(in_channels, inner_dim, 1)
            self.transformer_blocks = make_blocks()
            self.proj_out = (
                nn.Linear(inner_dim, self.out_channels) if linear else nn.Conv2d(inner_dim, self.out_channels, 1)
            )
        else:
            if num_vector_embeds is None:
                raise RuntimeError(
                    "Transformer2DModel.__init__: internal check failed: num_vector_embeds is not None"
                )
            if sample_size is None:
                raise ValueError("Transformer2DModel: discrete (num_vector_embeds) inputs need sample_size")
            self.height = self.width = sample_size
            self.latent_image_embedding = ImagePositionalEmbeddings(
                num_embed=num_vector_embeds, embed_dim=inner_dim, height=sample_size, width=sample_size
            )
            self.transformer_blocks = make_blocks()
            self.norm_out = nn.LayerNorm(inner_dim)
            self.out = nn.Linear(inner_dim, num_vector_embeds - 1)

    # -- loading: Diffusers' class remapping ------------------------------------------------

    @classmethod
    def _from_folder(
        cls,
        folder: str | os.PathLike[str],
        options: LoadOptions,
        *,
        component: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Any:
        """Load a folder; an ``ada_norm_zero`` / ``ada_norm_single`` config loads as DiT / PixArt."""
        config = {**cls.load_config(folder), **(overrides or {})}
        target = _REMAPPED_CLASSES.get(str(config.get("norm_type")))
        if cls is Transformer2DModel and target is not None:
            import importlib

            module, name = target
            remapped = typing.cast(type[ModelMixin], getattr(importlib.import_module(module), name))
            return remapped._from_folder(folder, options, component=component, overrides=overrides)
        return super()._from_folder(folder, options, component=component, overrides=overrides)

    # -- forward ----------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor | None] | None = None,
        class_labels: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Run the model on a feature map, a patched latent or discrete latent tokens (see the class doc)."""
        dtype = hidden_states.dtype if hidden_states.is_floating_point() else self.dtype
        attention_mask = mask_to_bias(attention_mask, dtype)
        encoder_attention_mask = mask_to_bias(encoder_attention_mask, dtype)
        if self.is_input_patches:
            out = self._forward_patched(
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                timestep=timestep,
                class_labels=class_labels,
                added_cond_kwargs=added_cond_kwargs,
                cross_attention_kwargs=cross_attention_kwargs,
                attention_mask=attention_mask,
                encoder_attention_mask=encoder_attention_mask,
            )
            return Transformer2DModelOutput(sample=out) if return_dict else (out,)

        residual = hidden_states
        if self.is_input_continuous:
            batch, _, height, width = hidden_states.shape
            tokens = self.norm(hidden_states)
            if self.use_linear_projection:
                tokens = self.proj_in(tokens.permute(0, 2, 3, 1).reshape(batch, height * width, -1))
            else:
                tokens = self.proj_in(tokens).permute(0, 2, 3, 1).reshape(batch, height * width, self.inner_dim)
        else:
            tokens = self.latent_image_embedding(hidden_states)

        for block in self.transformer_blocks:
            tokens = block(
                tokens,
                attention_mask=attention_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                timestep=timestep,
                cross_attention_kwargs=cross_attention_kwargs,
                class_labels=class_labels,
            )

        if self.is_input_continuous:
            if self.use_linear_projection:
                out = self.proj_out(tokens).reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()
            else:
                out = self.proj_out(tokens.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous())
            out = out + residual
        else:
            logits = self.out(self.norm_out(tokens)).permute(0, 2, 1)
            out = F.log_softmax(logits.double(), dim=1).float()
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
