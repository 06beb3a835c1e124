"""Extra conditioning of the UNets on text and image embeddings (unCLIP, Kandinsky 2.x, DeepFloyd IF):
encoder-state projections (``encoder_hid_dim_type``) and additions to the timestep embedding
(``addition_embed_type``). Keys and shapes are Diffusers'.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "AttentionPooling",
    "ImageHintTimeEmbedding",
    "ImageProjection",
    "ImageTimeEmbedding",
    "TextImageProjection",
    "TextImageTimeEmbedding",
    "TextTimeEmbedding",
]


class TextImageProjection(nn.Module):
    """Kandinsky 2.1 encoder states: ``num_image_text_embeds`` tokens projected from the image
    embedding ``(B, image_embed_dim)``, followed by the projected text states ``(B, S, text_embed_dim)``;
    output ``(B, num_image_text_embeds + S, cross_attention_dim)``."""

    def __init__(
        self,
        text_embed_dim: int = 1024,
        image_embed_dim: int = 768,
        cross_attention_dim: int = 768,
        num_image_text_embeds: int = 10,
    ) -> None:
        super().__init__()
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = nn.Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.text_proj = nn.Linear(text_embed_dim, cross_attention_dim)

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        image_tokens = self.image_embeds(image_embeds).reshape(text_embeds.shape[0], self.num_image_text_embeds, -1)
        return torch.cat([image_tokens, self.text_proj(text_embeds)], dim=1)


class ImageProjection(nn.Module):
    """Kandinsky 2.2 encoder states: ``num_image_text_embeds`` layer-normed tokens projected from the
    image embedding ``(B, image_embed_dim)``; output ``(B, num_image_text_embeds, cross_attention_dim)``."""

    def __init__(self, image_embed_dim: int = 768, cross_attention_dim: int = 768, num_image_text_embeds: int = 32):
        super().__init__()
        self.num_image_text_embeds = num_image_text_embeds
        self.image_embeds = nn.Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.image_embeds(image_embeds.to(self.image_embeds.weight.dtype))
        out: torch.Tensor = self.norm(tokens.reshape(image_embeds.shape[0], self.num_image_text_embeds, -1))
        return out


class AttentionPooling(nn.Module):
    """Pool a sequence ``(B, S, D)`` to ``(B, D)``: a query token (the mean plus a learned position
    embedding) attends over itself and the sequence (CLIP's attention pooling, as in GLIDE / IF)."""

    def __init__(self, num_heads: int, embed_dim: int, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.dtype = dtype
        self.positional_embedding = nn.Parameter(torch.randn(1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim, dtype=dtype)
        self.q_proj = nn.Linear(embed_dim, embed_dim, dtype=dtype)
        self.v_proj = nn.Linear(embed_dim, embed_dim, dtype=dtype)
        self.num_heads = num_heads
        self.dim_per_head = embed_dim // num_heads

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, D)`` -> ``(B * heads, head_dim, T)``."""
        b = x.shape[0]
        return (
            x.view(b, -1, self.num_heads, self.dim_per_head)
            .transpose(1, 2)
            .reshape(b * self.num_heads, -1, self.dim_per_head)
            .transpose(1, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        query = x.mean(dim=1, keepdim=True) + self.positional_embedding.to(x.dtype)
        x = torch.cat([query, x], dim=1)
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        scale = 1 / math.sqrt(math.sqrt(self.dim_per_head))  # split over q and k: steadier in fp16
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, 1).transpose(1, 2)
        return out[:, 0, :]


class TextTimeEmbedding(nn.Module):
    """``addition_embed_type="text"`` (DeepFloyd IF): norm, attention-pool, project and norm the
    encoder states ``(B, S, encoder_dim)`` to ``(B, time_embed_dim)``."""

    def __init__(self, encoder_dim: int, time_embed_dim: int, num_heads: int = 64) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(encoder_dim)
        self.pool = AttentionPooling(num_heads, encoder_dim)
        self.proj = nn.Linear(encoder_dim, time_embed_dim)
        self.norm2 = nn.LayerNorm(time_embed_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.norm2(self.proj(self.pool(self.norm1(hidden_states))))
        return out


class TextImageTimeEmbedding(nn.Module):
    """``addition_embed_type="text_image"`` (Kandinsky 2.1): projected, normed pooled text embedding
    plus projected image embedding, ``(B, time_embed_dim)``."""

    def __init__(self, text_embed_dim: int = 768, image_embed_dim: int = 768, time_embed_dim: int = 1536) -> None:
        super().__init__()
        self.text_proj = nn.Linear(text_embed_dim, time_embed_dim)
        self.text_norm = nn.LayerNorm(time_embed_dim)
        self.image_proj = nn.Linear(image_embed_dim, time_embed_dim)

    def forward(self, text_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.image_proj(image_embeds) + self.text_norm(self.text_proj(text_embeds))
        return out


class ImageTimeEmbedding(nn.Module):
    """``addition_embed_type="image"`` (Kandinsky 2.2): projected, normed image embedding ``(B, time_embed_dim)``."""

    def __init__(self, image_embed_dim: int = 768, time_embed_dim: int = 1536) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_embed_dim, time_embed_dim)
        self.image_norm = nn.LayerNorm(time_embed_dim)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.image_norm(self.image_proj(image_embeds))
        return out


class ImageHintTimeEmbedding(ImageTimeEmbedding):
    """``addition_embed_type="image_hint"`` (Kandinsky 2.2 ControlNet): the image embedding as in
    :class:`ImageTimeEmbedding`, and the hint image ``(B, 3, H, W)`` encoded by a convolution stack
    (``input_hint_block``) to ``(B, 4, H/8, W/8)``, which the UNet concatenates to its input."""

    def __init__(self, image_embed_dim: int = 768, time_embed_dim: int = 1536) -> None:
        super().__init__(image_embed_dim, time_embed_dim)
        layers: list[nn.Module] = []
        # (in, out, stride) of each 3x3 convolution, SiLU between them
        convs = ((3, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1), (96, 256, 2), (256, 4, 1))
        for i, (cin, cout, stride) in enumerate(convs):
            layers.append(nn.Conv2d(cin, cout, 3, padding=1, stride=stride))
            if i < len(convs) - 1:
                layers.append(nn.SiLU())
        self.input_hint_block = nn.Sequential(*layers)

    def forward(self, image_embeds: torch.Tensor, hint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        return super().forward(image_embeds), self.input_hint_block(hint)
