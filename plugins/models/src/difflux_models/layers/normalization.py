"""Normalization layers: adaptive layer norms (DiT, PixArt), RMSNorm and the spatial norm of MoVQ decoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .embeddings import CombinedTimestepLabelEmbeddings, PixArtAlphaCombinedTimestepSizeEmbeddings

__all__ = ["AdaGroupNorm", "AdaLayerNorm", "AdaLayerNormSingle", "AdaLayerNormZero", "RMSNorm", "SpatialNorm"]


class AdaLayerNorm(nn.Module):
    """Layer norm whose scale and shift come from an embedded timestep (keys ``emb``, ``linear``)."""

    def __init__(
        self,
        embedding_dim: int,
        num_embeddings: int | None = None,
        output_dim: int | None = None,
        norm_elementwise_affine: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        output_dim = output_dim or embedding_dim * 2
        self.emb = nn.Embedding(num_embeddings, embedding_dim) if num_embeddings is not None else None
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, output_dim)
        self.norm = nn.LayerNorm(output_dim // 2, norm_eps, norm_elementwise_affine)

    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor | None = None, temb: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.emb is not None:
            if timestep is None:
                raise RuntimeError("AdaLayerNorm.forward: internal check failed: timestep is not None")
            temb = self.emb(timestep)
        if temb is None:
            raise RuntimeError("AdaLayerNorm.forward: internal check failed: temb is not None")
        scale, shift = self.linear(self.silu(temb)).chunk(2, dim=0)
        return self.norm(x) * (1 + scale) + shift  # type: ignore[no-any-return]


class AdaLayerNormZero(nn.Module):
    """adaLN-zero (DiT): six modulation vectors from the timestep and class embedding."""

    def __init__(self, embedding_dim: int, num_embeddings: int | None = None, bias: bool = True) -> None:
        super().__init__()
        self.emb = (
            CombinedTimestepLabelEmbeddings(num_embeddings, embedding_dim) if num_embeddings is not None else None
        )
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 6 * embedding_dim, bias=bias)
        self.norm = nn.LayerNorm(embedding_dim, elementwise_affine=False, eps=1e-6)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        hidden_dtype: torch.dtype | None = None,
        emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.emb is not None:
            if not (timestep is not None and class_labels is not None):
                raise RuntimeError(
                    "AdaLayerNormZero.forward: internal check failed: timestep is not None and class_labels is not None"
                )
            emb = self.emb(timestep, class_labels, hidden_dtype=hidden_dtype)
        if emb is None:
            raise RuntimeError("AdaLayerNormZero.forward: internal check failed: emb is not None")
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.linear(self.silu(emb)).chunk(6, dim=1)
        x = self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLayerNormSingle(nn.Module):
    """PixArt-alpha's single adaLN: one timestep (and size) embedding, six modulation vectors for all blocks."""

    def __init__(self, embedding_dim: int, use_additional_conditions: bool = False) -> None:
        super().__init__()
        self.emb = PixArtAlphaCombinedTimestepSizeEmbeddings(
            embedding_dim, size_emb_dim=embedding_dim // 3, use_additional_conditions=use_additional_conditions
        )
        self.silu = nn.SiLU()
        self.linear = nn.Linear(embedding_dim, 6 * embedding_dim, bias=True)

    def forward(
        self,
        timestep: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor | None] | None = None,
        batch_size: int | None = None,
        hidden_dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        extra = added_cond_kwargs or {}
        embedded = self.emb(
            timestep,
            resolution=extra.get("resolution"),
            aspect_ratio=extra.get("aspect_ratio"),
            batch_size=batch_size,
            hidden_dtype=hidden_dtype,
        )
        return self.linear(self.silu(embedded)), embedded


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in float32."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if elementwise_affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            if self.weight.dtype in (torch.float16, torch.bfloat16):
                x = x.to(self.weight.dtype)
            x = x * self.weight
            if self.bias is not None:
                x = x + self.bias
        return x.to(dtype)


class SpatialNorm(nn.Module):
    """Group norm modulated by a quantized latent resized to the feature map (MoVQ)."""

    def __init__(self, f_channels: int, zq_channels: int) -> None:
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_channels=f_channels, num_groups=32, eps=1e-6, affine=True)
        self.conv_y = nn.Conv2d(zq_channels, f_channels, kernel_size=1)
        self.conv_b = nn.Conv2d(zq_channels, f_channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
        if zq is None:
            raise RuntimeError("SpatialNorm needs the quantized latent")
        zq = F.interpolate(zq, size=f.shape[-2:], mode="nearest")
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)  # type: ignore[no-any-return]


class AdaGroupNorm(nn.Module):
    """Group norm without affine weights, scaled and shifted by a linear map of an embedding
    (``x_norm * (1 + scale) + shift``; key ``linear``). Used by the K-diffusion blocks.

    ``forward(x (B, C, H, W), emb (B, embedding_dim))``; ``act_fn`` is applied to ``emb`` first.
    """

    def __init__(
        self, embedding_dim: int, out_dim: int, num_groups: int, act_fn: str | None = None, eps: float = 1e-5
    ) -> None:
        super().__init__()
        from .activations import get_activation

        self.num_groups = num_groups
        self.eps = eps
        self.act = get_activation(act_fn) if act_fn is not None else None
        self.linear = nn.Linear(embedding_dim, out_dim * 2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            emb = self.act(emb)
        scale, shift = self.linear(emb)[:, :, None, None].chunk(2, dim=1)
        out: torch.Tensor = F.group_norm(x, self.num_groups, eps=self.eps) * (1 + scale) + shift
        return out
