"""``CLIPImageProjection``: the projection GLIGEN (text-image) applies to CLIP image embeddings so
they live in the text-embedding space its position net reads (Li et al., 2023)."""

from __future__ import annotations

import torch
from difflux.modeling import ModelMixin
from torch import nn

__all__ = ["CLIPImageProjection"]


class CLIPImageProjection(ModelMixin):
    """One bias-free linear map ``hidden_size -> hidden_size`` (key ``project.weight``; config key
    ``hidden_size``, as Diffusers' ``CLIPImageProjection``)."""

    def __init__(self, hidden_size: int = 768) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.project = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(..., hidden_size)`` image embeddings; returns the same shape and dtype."""
        out: torch.Tensor = self.project(x)
        return out
