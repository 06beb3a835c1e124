"""Kandinsky 2.1's text encoder: multilingual CLIP (M-CLIP) on transformers' XLM-RoBERTa.

M-CLIP (Carlsson et al., *Cross-lingual and Multilingual CLIP*, LREC 2022) distils CLIP's text tower
into XLM-RoBERTa: the token states are mean-pooled over the attention mask and projected linearly
to the CLIP width. Config keys (``transformerDimensions``, ``numDims``, ``model_type="M-CLIP"``) and
parameter names (``transformer.*``, ``LinearTransformation.*``) are the published checkpoint's.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, XLMRobertaConfig, XLMRobertaModel

__all__ = ["MCLIPConfig", "MultilingualCLIP"]


class MCLIPConfig(XLMRobertaConfig):
    """XLM-RoBERTa's config plus ``transformerDimensions`` (the encoder width) and ``numDims`` (the CLIP width)."""

    model_type = "M-CLIP"

    def __init__(self, transformerDimSize: int = 1024, imageDimSize: int = 768, **kwargs: Any) -> None:
        self.transformerDimensions = transformerDimSize
        self.numDims = imageDimSize
        super().__init__(**kwargs)


class MultilingualCLIP(PreTrainedModel):
    """``forward(input_ids, attention_mask) -> (pooled (B, numDims), token states (B, T, transformerDimensions))``.

    ``input_ids`` and ``attention_mask``: ``(B, T)`` int tensors; the pooled embedding is the mean of the
    token states where ``attention_mask`` is 1, through ``LinearTransformation``.
    """

    config_class = MCLIPConfig
    base_model_prefix = "transformer"

    def __init__(self, config: MCLIPConfig, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.transformer = XLMRobertaModel(config)
        self.LinearTransformation = torch.nn.Linear(config.transformerDimensions, config.numDims)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states: torch.Tensor = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
        mask = attention_mask.unsqueeze(2).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1)
        return self.LinearTransformation(pooled), states
