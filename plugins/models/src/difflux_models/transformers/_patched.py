"""What DiT, PixArt and the patched mode of ``Transformer2DModel`` share.

A patched transformer turns a latent ``(batch, channels, height, width)`` into patch tokens
(``pos_embed``), runs ``transformer_blocks``, and maps the tokens back with one of two heads:

* the **adaLN-zero head** (DiT): ``norm_out``, ``proj_out_1`` (shift/scale from the timestep and
  class embedding of the first block's norm), ``proj_out_2``;
* the **single head** (PixArt): ``norm_out``, ``scale_shift_table`` plus the embedded timestep,
  ``proj_out``; the timestep (and optional resolution / aspect ratio) goes through
  ``adaln_single`` once for all blocks, and captions through ``caption_projection``.

:class:`PatchedTransformerMixin` builds these modules under the Diffusers key names and runs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from difflux.outputs import BaseOutput
from torch import nn

from ..layers.attention import BasicTransformerBlock
from ..layers.embeddings import PatchEmbed, PixArtAlphaTextProjection
from ..layers.normalization import AdaLayerNormSingle, AdaLayerNormZero

__all__ = ["PatchedTransformerMixin", "Transformer2DModelOutput", "default_interpolation_scale", "unpatchify"]

#: Config keys that a Diffusers ``Transformer2DModel`` folder carries besides the DiT / PixArt ones.
LEGACY_TRANSFORMER_2D_KEYS = frozenset(
    {
        "cross_attention_dim",
        "num_vector_embeds",
        "use_linear_projection",
        "only_cross_attention",
        "double_self_attention",
        "attention_type",
        "caption_channels",
        "interpolation_scale",
        "use_additional_conditions",
    }
)


@dataclasses.dataclass
class Transformer2DModelOutput(BaseOutput):
    """What the 2D transformers return: ``sample`` shaped ``(batch, channels, height, width)``."""

    sample: torch.Tensor


def default_interpolation_scale(sample_size: int, interpolation_scale: float | None) -> float:
    """The position-embedding interpolation scale: the configured one, else ``max(sample_size // 64, 1)``."""
    return interpolation_scale if interpolation_scale is not None else max(sample_size // 64, 1)


def unpatchify(tokens: torch.Tensor, *, patch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """``(batch, height * width, p * p * channels)`` tokens to a ``(batch, channels, height * p, width * p)`` image."""
    p = patch_size
    x = tokens.reshape(-1, height, width, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(-1, channels, height * p, width * p)


class PatchedTransformerMixin(nn.Module):
    """Builds and runs the patch embedding, the blocks and the output head of a patched 2D transformer.

    Models call :meth:`_init_patched` from ``__init__`` and :meth:`_forward_patched` from ``forward``.
    """

    pos_embed: PatchEmbed
    transformer_blocks: nn.ModuleList
    patch_size: int
    out_channels: int
    inner_dim: int
    patched_norm_type: str
    # single head (PixArt)
    adaln_single: AdaLayerNormSingle | None
    caption_projection: PixArtAlphaTextProjection | None
    use_additional_conditions: bool
    proj_out: nn.Module

    def _init_patched(
        self,
        *,
        num_attention_heads: int,
        attention_head_dim: int,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        sample_size: int,
        patch_size: int,
        interpolation_scale: float,
        norm_type: str,
        block_kwargs: Mapping[str, Any],
        use_additional_conditions: bool = False,
        caption_channels: int | None = None,
    ) -> None:
        if norm_type not in ("ada_norm_zero", "ada_norm_single"):
            raise ValueError(
                f"{type(self).__name__}: a patched transformer needs norm_type 'ada_norm_zero' (DiT) or "
                f"'ada_norm_single' (PixArt), got {norm_type!r}"
            )
        if norm_type == "ada_norm_zero" and block_kwargs.get("num_embeds_ada_norm") is None:
            raise ValueError(f"{type(self).__name__}: norm_type 'ada_norm_zero' needs num_embeds_ada_norm")
        inner_dim = num_attention_heads * attention_head_dim
        self.inner_dim = inner_dim
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.patched_norm_type = norm_type
        self.use_additional_conditions = use_additional_conditions

        self.pos_embed = PatchEmbed(
            height=sample_size,
            width=sample_size,
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=inner_dim,
            interpolation_scale=interpolation_scale,
        )
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim, num_attention_heads, attention_head_dim, norm_type=norm_type, **block_kwargs
            )
            for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(inner_dim, elementwise_affine=False, eps=1e-6)
        out_features = patch_size * patch_size * out_channels
        if norm_type == "ada_norm_zero":
            self.proj_out_1 = nn.Linear(inner_dim, 2 * inner_dim)
            self.proj_out_2 = nn.Linear(inner_dim, out_features)
            self.adaln_single = None
            self.caption_projection = None
        else:
            self.scale_shift_table = nn.Parameter(torch.randn(2, inner_dim) / inner_dim**0.5)
            self.proj_out = nn.Linear(inner_dim, out_features)
            self.adaln_single = AdaLayerNormSingle(inner_dim, use_additional_conditions=use_additional_conditions)
            self.caption_projection = (
                PixArtAlphaTextProjection(in_features=caption_channels, hidden_size=inner_dim)
                if caption_channels is not None
                else None
            )

    def _forward_patched(
        self,
        hidden_states: torch.Tensor,
        *,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor | None] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        attention_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Patchify, condition, run the blocks, apply the head, unpatchify."""
        batch = hidden_states.shape[0]
        height, width = hidden_states.shape[-2] // self.patch_size, hidden_states.shape[-1] // self.patch_size
        tokens = self.pos_embed(hidden_states)

        block_timestep = timestep
        embedded_timestep: torch.Tensor | None = None
        if self.adaln_single is not None:
            if timestep is None:
                raise ValueError(f"{type(self).__name__}: `timestep` is required")
            if self.use_additional_conditions and added_cond_kwargs is None:
                raise ValueError(
                    f"{type(self).__name__}: `added_cond_kwargs` (resolution, aspect_ratio) is required when "
                    "use_additional_conditions is on"
                )
            block_timestep, embedded_timestep = self.adaln_single(
                timestep, added_cond_kwargs, batch_size=batch, hidden_dtype=tokens.dtype
            )
        if self.caption_projection is not None:
            if encoder_hidden_states is None:
                raise ValueError(f"{type(self).__name__}: `encoder_hidden_states` (captions) is required")
            encoder_hidden_states = self.caption_projection(encoder_hidden_states).view(batch, -1, tokens.shape[-1])

        for block in self.transformer_blocks:
            tokens = block(
                tokens,
                attention_mask=attention_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
                timestep=block_timestep,
                cross_attention_kwargs=cross_attention_kwargs,
                class_labels=class_labels,
            )

        if embedded_timestep is None:
            tokens = self._ada_zero_head(tokens, timestep, class_labels)
        else:
            tokens = self._single_head(tokens, embedded_timestep)
        return unpatchify(tokens, patch_size=self.patch_size, channels=self.out_channels, height=height, width=width)

    def _ada_zero_head(
        self, tokens: torch.Tensor, timestep: torch.Tensor | None, class_labels: torch.Tensor | None
    ) -> torch.Tensor:
        """DiT's final layer: shift and scale from the first block's timestep + class embedding."""
        norm1 = self.transformer_blocks[0].norm1
        if not (isinstance(norm1, AdaLayerNormZero) and norm1.emb is not None):
            raise RuntimeError(
                "PatchedTransformerMixin._ada_zero_head: internal check failed: "
                "isinstance(norm1, AdaLayerNormZero) and norm1.emb is not None"
            )
        if timestep is None or class_labels is None:
            raise ValueError(f"{type(self).__name__}: `timestep` and `class_labels` are required")
        conditioning = norm1.emb(timestep, class_labels, hidden_dtype=tokens.dtype)
        shift, scale = self.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        tokens = self.norm_out(tokens) * (1 + scale[:, None]) + shift[:, None]
        return self.proj_out_2(tokens)  # type: ignore[no-any-return]

    def _single_head(self, tokens: torch.Tensor, embedded_timestep: torch.Tensor) -> torch.Tensor:
        """PixArt's final layer: a learned shift/scale table plus the embedded timestep."""
        table = self.scale_shift_table[None] + embedded_timestep[:, None].to(self.scale_shift_table.device)
        shift, scale = table.chunk(2, dim=1)
        tokens = self.norm_out(tokens) * (1 + scale.to(tokens.device)) + shift.to(tokens.device)
        return self.proj_out(tokens)  # type: ignore[no-any-return]
