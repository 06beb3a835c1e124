"""AltDiffusion's text encoder: XLM-RoBERTa with a linear projection to the UNet's cross-attention width.

Chen et al., *AltCLIP: Altering the Language Encoder in CLIP for Extended Language Capabilities*
(2022, arXiv:2211.06679): the multilingual XLM-R encoder distilled into CLIP's text space. Built on
``transformers``' ``XLMRobertaModel``; config and state-dict keys are Diffusers' (``roberta.*``,
``transformation.*``, optionally ``transformation_pre.*`` and ``pre_LN.*``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from transformers import RobertaPreTrainedModel, XLMRobertaConfig, XLMRobertaModel
from transformers.utils.generic import ModelOutput

__all__ = ["RobertaSeriesConfig", "RobertaSeriesModelWithTransformation", "TransformationModelOutput"]


@dataclasses.dataclass
class TransformationModelOutput(ModelOutput):
    """``projection_state`` ``(batch, tokens, project_dim)``: what the UNet attends to (index 0);
    ``last_hidden_state`` ``(batch, tokens, hidden_size)``; per-layer ``hidden_states`` / ``attentions`` on request."""

    projection_state: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class RobertaSeriesConfig(XLMRobertaConfig):
    """XLM-RoBERTa's config plus ``project_dim`` (the projection's width), ``pooler_fn``, ``learn_encoder``,
    ``use_attention_mask`` (the pipeline passes the padding mask) and optionally ``has_pre_transformation``."""

    def __init__(
        self,
        pad_token_id: int = 1,
        bos_token_id: int = 0,
        eos_token_id: int = 2,
        project_dim: int = 512,
        pooler_fn: str = "cls",
        learn_encoder: bool = False,
        use_attention_mask: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)
        self.project_dim = project_dim
        self.pooler_fn = pooler_fn
        self.learn_encoder = learn_encoder
        self.use_attention_mask = use_attention_mask


class RobertaSeriesModelWithTransformation(RobertaPreTrainedModel):
    """XLM-RoBERTa whose last hidden state is projected to ``project_dim`` (``transformation``); with
    ``has_pre_transformation`` (AltDiffusion m9), the layer-normed penultimate state through ``transformation_pre``."""

    _keys_to_ignore_on_load_unexpected = [r"pooler", r"logit_scale"]
    _keys_to_ignore_on_load_missing = [r"position_ids", r"predictions.decoder.bias"]
    base_model_prefix = "roberta"
    config_class = RobertaSeriesConfig

    def __init__(self, config: RobertaSeriesConfig) -> None:
        super().__init__(config)
        self.roberta = XLMRobertaModel(config)
        self.transformation = torch.nn.Linear(config.hidden_size, config.project_dim)
        self.has_pre_transformation = bool(getattr(config, "has_pre_transformation", False))
        if self.has_pre_transformation:
            self.transformation_pre = torch.nn.Linear(config.hidden_size, config.project_dim)
            self.pre_LN = torch.nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> TransformationModelOutput:
        """Encode token ids ``(batch, tokens)`` (``attention_mask``: 1 for real tokens) into projected states."""
        out = self.roberta(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=True if self.has_pre_transformation else output_hidden_states,
            return_dict=True,
        )
        if self.has_pre_transformation:
            projected = self.transformation_pre(self.pre_LN(out.hidden_states[-2]))
        else:
            projected = self.transformation(out.last_hidden_state)
        return TransformationModelOutput(
            projection_state=projected,
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
