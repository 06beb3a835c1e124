"""``StableDiffusionSafetyChecker``: flags images close to a fixed set of concept embeddings in CLIP space.

It is a ``transformers`` model (a CLIP vision tower plus a projection), saved as Diffusers saves
it: ``config.json`` holds a ``CLIPConfig`` and ``model_index.json`` names it
``["stable_diffusion", "StableDiffusionSafetyChecker"]``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from transformers import CLIPConfig, CLIPVisionModel, PreTrainedModel

__all__ = ["StableDiffusionSafetyChecker"]

#: How much closer every concept threshold gets when a "special care" concept matched.
SPECIAL_CARE_MARGIN = 0.01


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return nn.functional.normalize(a) @ nn.functional.normalize(b).t()


class StableDiffusionSafetyChecker(PreTrainedModel):
    """Blacks out images whose CLIP embedding is within a concept's threshold; returns ``(images, flags)``."""

    config_class = CLIPConfig
    main_input_name = "clip_input"
    _no_split_modules = ["CLIPEncoderLayer"]

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config)
        dim = int(config.projection_dim or 0)
        vision: Any = config.vision_config
        self.vision_model = CLIPVisionModel(vision)
        self.visual_projection = nn.Linear(vision.hidden_size, dim, bias=False)
        self.concept_embeds = nn.Parameter(torch.ones(17, dim), requires_grad=False)
        self.special_care_embeds = nn.Parameter(torch.ones(3, dim), requires_grad=False)
        self.concept_embeds_weights = nn.Parameter(torch.ones(17), requires_grad=False)
        self.special_care_embeds_weights = nn.Parameter(torch.ones(3), requires_grad=False)
        self.post_init()

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, pretrained_model_name_or_path: str | os.PathLike[str], *args: Any, **kwargs: Any
    ) -> Any:
        """``transformers`` loading, taking difflux's ``torch_dtype`` name for the dtype."""
        if "torch_dtype" in kwargs:
            kwargs["dtype"] = kwargs.pop("torch_dtype")
        kwargs.setdefault("local_files_only", True)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @torch.no_grad()
    def forward(self, clip_input: torch.Tensor, images: Any) -> tuple[Any, list[bool]]:
        pooled = self.vision_model(clip_input)[1]
        embeds = self.visual_projection(pooled).float()
        special = _cosine(embeds, self.special_care_embeds.float()) - self.special_care_embeds_weights.float()
        margin = (special > 0).any(dim=1, keepdim=True).float() * SPECIAL_CARE_MARGIN
        concept = _cosine(embeds, self.concept_embeds.float()) - self.concept_embeds_weights.float() + margin
        flags = (concept > 0).any(dim=1)
        if bool(flags.any()):
            if isinstance(images, torch.Tensor):
                images = images.clone()
                images[flags] = 0.0
            else:
                for i in torch.nonzero(flags).flatten().tolist():
                    images[i] = images[i] * 0
        return images, [bool(f) for f in flags]
