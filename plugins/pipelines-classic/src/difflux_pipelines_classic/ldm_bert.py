"""``LDMBertModel``: the caption encoder of the text-to-image Latent Diffusion model (Rombach et al. 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models", arXiv:2112.10752, sec. 4.3.1 and appendix E).

A pre-norm transformer encoder over BERT word pieces: token and learned position embeddings, then
``encoder_layers`` blocks of (layer norm, multi-head self-attention, residual, layer norm, GELU MLP,
residual) and a final layer norm. Written on ``transformers``' ``PreTrainedModel`` /
``PretrainedConfig``, with the config keys (``model_type="ldmbert"``) and state-dict keys
(``model.embed_tokens.weight``, ``model.layers.0.self_attn.q_proj.weight``, ...,
``to_logits.weight``) of Diffusers' class, so published folders load and save both ways.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput

__all__ = ["LDMBertConfig", "LDMBertModel"]


class LDMBertConfig(PretrainedConfig):  # type: ignore[misc]
    """The encoder's sizes (defaults: the published ``CompVis/ldm-text2im-large-256`` encoder, 32 layers, 1280 wide)."""

    model_type = "ldmbert"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_attention_heads": "encoder_attention_heads", "hidden_size": "d_model"}

    def __init__(
        self,
        vocab_size: int = 30522,
        max_position_embeddings: int = 77,
        encoder_layers: int = 32,
        encoder_ffn_dim: int = 5120,
        encoder_attention_heads: int = 8,
        head_dim: int = 64,
        encoder_layerdrop: float = 0.0,
        activation_function: str = "gelu",
        d_model: int = 1280,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        init_std: float = 0.02,
        classifier_dropout: float = 0.0,
        scale_embedding: bool = False,
        use_cache: bool = True,
        pad_token_id: int = 0,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.d_model = d_model
        self.encoder_ffn_dim = encoder_ffn_dim
        self.encoder_layers = encoder_layers
        self.num_hidden_layers = encoder_layers
        self.encoder_attention_heads = encoder_attention_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.activation_function = activation_function
        self.init_std = init_std
        self.encoder_layerdrop = encoder_layerdrop
        self.classifier_dropout = classifier_dropout
        self.use_cache = use_cache
        self.scale_embedding = scale_embedding
        kwargs["pad_token_id"] = pad_token_id
        super().__init__(**kwargs)


class LDMBertAttention(nn.Module):
    """Multi-head self-attention with ``heads x head_dim`` inner width (``q_proj`` / ``k_proj`` / ``v_proj`` without
    bias, ``out_proj`` with bias)."""

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        inner = num_heads * head_dim
        self.k_proj = nn.Linear(embed_dim, inner, bias=False)
        self.v_proj = nn.Linear(embed_dim, inner, bias=False)
        self.q_proj = nn.Linear(embed_dim, inner, bias=False)
        self.out_proj = nn.Linear(inner, embed_dim)

    def forward(self, hidden_states: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``hidden_states`` ``(batch, tokens, embed_dim)``; ``bias`` additive ``(batch, 1, tokens, tokens)``."""
        batch, tokens, _ = hidden_states.shape

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = (
            heads(self.q_proj(hidden_states)),
            heads(self.k_proj(hidden_states)),
            heads(self.v_proj(hidden_states)),
        )
        scores = torch.matmul(q * self.head_dim**-0.5, k.transpose(-1, -2))
        if bias is not None:
            scores = scores + bias
        probs = nn.functional.dropout(scores.softmax(dim=-1), p=self.dropout, training=self.training)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return self.out_proj(out)  # type: ignore[no-any-return]


class LDMBertEncoderLayer(nn.Module):
    """Pre-norm block: self-attention and a GELU MLP, each with a residual connection."""

    def __init__(self, config: LDMBertConfig) -> None:
        super().__init__()
        width = config.d_model
        self.self_attn = LDMBertAttention(
            width, config.encoder_attention_heads, config.head_dim, config.attention_dropout
        )
        self.self_attn_layer_norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, width)
        self.final_layer_norm = nn.LayerNorm(width)
        self.activation_fn = ACT2FN[config.activation_function]
        self.dropout, self.activation_dropout = config.dropout, config.activation_dropout

    def forward(self, hidden_states: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        drop = nn.functional.dropout
        attended = self.self_attn(self.self_attn_layer_norm(hidden_states), bias)
        hidden_states = hidden_states + drop(attended, p=self.dropout, training=self.training)
        inner = self.activation_fn(self.fc1(self.final_layer_norm(hidden_states)))
        inner = self.fc2(drop(inner, p=self.activation_dropout, training=self.training))
        hidden_states = hidden_states + drop(inner, p=self.dropout, training=self.training)
        if hidden_states.dtype == torch.float16 and not torch.isfinite(hidden_states).all():
            limit = torch.finfo(torch.float16).max - 1000
            hidden_states = hidden_states.clamp(-limit, limit)
        return hidden_states


class LDMBertPreTrainedModel(PreTrainedModel):  # type: ignore[misc]
    """Weight initialisation (normal, ``init_std``) and the config class of the LDMBert models."""

    config_class = LDMBertConfig
    base_model_prefix = "model"
    _keys_to_ignore_on_load_unexpected = [r"encoder\.version", r"decoder\.version"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class LDMBertEncoder(LDMBertPreTrainedModel):
    """Token and position embeddings, the encoder layers and the final layer norm."""

    def __init__(self, config: LDMBertConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, config.d_model)
        self.layers = nn.ModuleList([LDMBertEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.layer_norm = nn.LayerNorm(config.d_model)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value  # type: ignore[assignment]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **_: Any,
    ) -> BaseModelOutput | tuple[torch.Tensor, ...]:
        """Encode ``input_ids`` ``(batch, tokens)`` int64 (or ``inputs_embeds``); ``attention_mask`` ``(batch, tokens)``
        1 keep, 0 padding. Returns the last hidden state ``(batch, tokens, d_model)`` (and every layer's input
        with ``output_hidden_states``).

        :raises ValueError: with both or neither of ``input_ids`` and ``inputs_embeds``.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("LDMBertEncoder: pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        tokens = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(tokens, device=inputs_embeds.device)[None]
        hidden = inputs_embeds + self.embed_positions(position_ids)
        hidden = nn.functional.dropout(hidden, p=self.config.dropout, training=self.training)
        bias = None
        if attention_mask is not None:
            keep = attention_mask[:, None, None, :].to(hidden.dtype).expand(-1, 1, tokens, -1)
            bias = (1.0 - keep).masked_fill((1.0 - keep).bool(), torch.finfo(hidden.dtype).min)
        states: list[torch.Tensor] = []
        for layer in self.layers:
            states.append(hidden)
            hidden = layer(hidden, bias)
        hidden = self.layer_norm(hidden)
        want_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        all_states = (*states, hidden) if want_states else None
        if return_dict is False:
            return tuple(v for v in (hidden, all_states) if v is not None)  # type: ignore[misc]
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=all_states)


class LDMBertModel(LDMBertPreTrainedModel):
    """The LDM caption encoder (``model``) and its unused masked-language head (``to_logits``, kept for the
    checkpoint's keys). ``model(input_ids)[0]`` is what the UNet cross-attends to."""

    _no_split_modules: list[str] = []

    def __init__(self, config: LDMBertConfig) -> None:
        super().__init__(config)
        self.model = LDMBertEncoder(config)
        self.to_logits = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutput | tuple[torch.Tensor, ...]:
        """The encoder's output (:meth:`LDMBertEncoder.forward`)."""
        return self.model(  # type: ignore[no-any-return]
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs,
        )
