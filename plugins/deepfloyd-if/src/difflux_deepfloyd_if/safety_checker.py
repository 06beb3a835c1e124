"""``IFSafetyChecker``: two linear heads on a CLIP image embedding flag unsafe and watermarked images.

A ``transformers`` model saved as Diffusers saves it: ``config.json`` holds a ``CLIPConfig``,
``model_index.json`` names it ``["deepfloyd_if", "IFSafetyChecker"]``; state-dict keys
``vision_model.*`` (a ``CLIPVisionModelWithProjection``), ``p_head.*`` and ``w_head.*``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import CLIPConfig, CLIPVisionModelWithProjection, PreTrainedModel

__all__ = ["IFSafetyChecker"]

logger = logging.getLogger("difflux")


def _black_out(images: Any, flags: list[bool]) -> Any:
    for i, flagged in enumerate(flags):
        if flagged:
            images[i] = torch.zeros_like(images[i]) if isinstance(images, torch.Tensor) else np.zeros(images[i].shape)
    return images


class IFSafetyChecker(PreTrainedModel):
    """Flags images whose CLIP image embedding scores above a threshold on the NSFW head (``p_head``) or
    the watermark head (``w_head``); flagged images are replaced by black ones.

    ``forward(clip_input (B, 3, S, S) float, images (B, H, W, 3) numpy or tensor)`` returns
    ``(images, nsfw flags, watermark flags)`` (two lists of ``B`` bools).
    """

    config_class = CLIPConfig
    main_input_name = "clip_input"
    _no_split_modules = ["CLIPEncoderLayer"]

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__(config)
        vision: Any = config.vision_config
        self.vision_model = CLIPVisionModelWithProjection(vision)
        self.p_head = nn.Linear(vision.projection_dim, 1)
        self.w_head = nn.Linear(vision.projection_dim, 1)
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
    def forward(
        self, clip_input: torch.Tensor, images: Any, p_threshold: float = 0.5, w_threshold: float = 0.5
    ) -> tuple[Any, list[bool], list[bool]]:
        embeds = self.vision_model(clip_input)[0]
        nsfw = [bool(v) for v in (self.p_head(embeds).flatten() > p_threshold).tolist()]
        watermark = [bool(v) for v in (self.w_head(embeds).flatten() > w_threshold).tolist()]
        if any(nsfw):
            logger.warning("IFSafetyChecker: possibly unsafe content in %d image(s); they are black", sum(nsfw))
        if any(watermark):
            logger.warning("IFSafetyChecker: a watermark was detected in %d image(s); they are black", sum(watermark))
        images = _black_out(_black_out(images, nsfw), watermark)
        return images, nsfw, watermark
