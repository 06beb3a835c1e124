"""``PriorTransformer``: the unCLIP / Kandinsky prior, which predicts a CLIP image embedding from a
text embedding (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with CLIP
Latents", the decoder-only transformer prior).

The sequence is ``[encoder states..., projected text embedding, time embedding, noisy image
embedding, prd token]`` plus a learned position embedding; a stack of transformer blocks, a final
norm and a projection read the image embedding off the last (``prd``) token.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from difflux.modeling import ModelMixin
from difflux.outputs import BaseOutput
from torch import nn

from ..layers.attention import AttentionProcessorMixin, BasicTransformerBlock
from ..layers.embeddings import TimestepEmbedding, Timesteps

__all__ = ["PriorTransformer", "PriorTransformerOutput"]


@dataclasses.dataclass
class PriorTransformerOutput(BaseOutput):
    """The predicted CLIP image embedding ``(batch, clip_embed_dim)``."""

    predicted_image_embedding: torch.Tensor


class PriorTransformer(ModelMixin, AttentionProcessorMixin):
    """The unCLIP prior; config keys as Diffusers' ``PriorTransformer``.

    ``causal_attention_mask`` (a non-persistent buffer) is applied only when an ``attention_mask``
    is given, as Diffusers does.
    """

    _no_split_modules = ("BasicTransformerBlock",)
    causal_attention_mask: torch.Tensor

    def __init__(
        self,
        num_attention_heads: int = 32,
        attention_head_dim: int = 64,
        num_layers: int = 20,
        embedding_dim: int = 768,
        num_embeddings: int = 77,
        additional_embeddings: int = 4,
        dropout: float = 0.0,
        time_embed_act_fn: str = "silu",
        norm_in_type: str | None = None,
        embedding_proj_norm_type: str | None = None,
        encoder_hid_proj_type: str | None = "linear",
        added_emb_type: str | None = "prd",
        time_embed_dim: int | None = None,
        embedding_proj_dim: int | None = None,
        clip_embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        for key, value, allowed in (
            ("norm_in_type", norm_in_type, ("layer",)),
            ("embedding_proj_norm_type", embedding_proj_norm_type, ("layer",)),
            ("encoder_hid_proj_type", encoder_hid_proj_type, ("linear",)),
            ("added_emb_type", added_emb_type, ("prd",)),
        ):
            if value is not None and value not in allowed:
                raise ValueError(f"PriorTransformer: unknown {key} {value!r}; expected None or {allowed[0]!r}")
        inner_dim = num_attention_heads * attention_head_dim
        self.num_attention_heads = num_attention_heads
        self.additional_embeddings = additional_embeddings
        time_embed_dim = time_embed_dim or inner_dim
        embedding_proj_dim = embedding_proj_dim or embedding_dim
        clip_embed_dim = clip_embed_dim or embedding_dim

        self.time_proj = Timesteps(inner_dim, True, 0)
        self.time_embedding = TimestepEmbedding(inner_dim, time_embed_dim, out_dim=inner_dim, act_fn=time_embed_act_fn)
        self.proj_in = nn.Linear(embedding_dim, inner_dim)
        self.embedding_proj_norm = nn.LayerNorm(embedding_proj_dim) if embedding_proj_norm_type else None
        self.embedding_proj = nn.Linear(embedding_proj_dim, inner_dim)
        self.encoder_hidden_states_proj = nn.Linear(embedding_dim, inner_dim) if encoder_hid_proj_type else None
        seq = num_embeddings + additional_embeddings
        self.positional_embedding = nn.Parameter(torch.zeros(1, seq, inner_dim))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, inner_dim)) if added_emb_type else None
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner_dim,
                num_attention_heads,
                attention_head_dim,
                dropout=dropout,
                activation_fn="gelu",
                attention_bias=True,
            )
            for _ in range(num_layers)
        )
        self.norm_in = nn.LayerNorm(inner_dim) if norm_in_type else None
        self.norm_out = nn.LayerNorm(inner_dim)
        self.proj_to_clip_embeddings = nn.Linear(inner_dim, clip_embed_dim)
        self.register_buffer("causal_attention_mask", torch.full([seq, seq], -10000.0).triu_(1)[None], persistent=False)
        self.clip_mean = nn.Parameter(torch.zeros(1, clip_embed_dim))
        self.clip_std = nn.Parameter(torch.zeros(1, clip_embed_dim))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float | int,
        proj_embedding: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> PriorTransformerOutput | tuple[torch.Tensor]:
        """Predict the clean image embedding.

        :param hidden_states: the noisy image embedding ``(B, embedding_dim)``.
        :param proj_embedding: the pooled text embedding ``(B, embedding_proj_dim)``.
        :param encoder_hidden_states: the text encoder states ``(B, S, embedding_dim)`` (needed when
            the model has ``encoder_hidden_states_proj``).
        :param attention_mask: ``(B, S)``, 1 keep, 0 discard (turns the causal mask on).
        :raises ValueError: if ``encoder_hidden_states`` is missing but the model projects them.
        """
        batch = hidden_states.shape[0]
        if not isinstance(timestep, torch.Tensor):
            timesteps = torch.tensor([timestep], dtype=torch.long, device=hidden_states.device)
        else:
            timesteps = timestep[None].to(hidden_states.device) if timestep.ndim == 0 else timestep
        timesteps = timesteps * torch.ones(batch, dtype=timesteps.dtype, device=timesteps.device)
        time_embeddings = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype))
        if self.embedding_proj_norm is not None:
            proj_embedding = self.embedding_proj_norm(proj_embedding)
        proj_embeddings = self.embedding_proj(proj_embedding)
        if self.encoder_hidden_states_proj is not None:
            if encoder_hidden_states is None:
                raise ValueError("PriorTransformer: this model projects encoder_hidden_states; pass them")
            encoder_hidden_states = self.encoder_hidden_states_proj(encoder_hidden_states)
        hidden_states = self.proj_in(hidden_states)
        positions = self.positional_embedding.to(hidden_states.dtype)

        tokens: list[torch.Tensor] = []
        prefix = 0  # tokens before the image embedding's
        if encoder_hidden_states is not None:
            tokens.append(encoder_hidden_states)
            prefix += encoder_hidden_states.shape[1]
        if proj_embeddings.ndim == 2:
            proj_embeddings = proj_embeddings[:, None, :]
        if hidden_states.ndim == 2:
            hidden_states = hidden_states[:, None, :]
        tokens += [proj_embeddings, time_embeddings[:, None, :], hidden_states]
        if self.prd_embedding is not None:
            tokens.append(self.prd_embedding.to(hidden_states.dtype).expand(batch, -1, -1))
        hidden_states = torch.cat(tokens, dim=1)
        prefix += proj_embeddings.shape[1] + 1
        if positions.shape[1] < hidden_states.shape[1]:
            tail = self.prd_embedding.shape[1] if self.prd_embedding is not None else 0
            positions = F.pad(positions, (0, 0, prefix, tail), value=0.0)
        hidden_states = hidden_states + positions

        if attention_mask is not None:
            bias = F.pad((1 - attention_mask.to(hidden_states.dtype)) * -10000.0, (0, self.additional_embeddings))
            attention_mask = (bias[:, None, :] + self.causal_attention_mask).to(hidden_states.dtype)
            attention_mask = attention_mask.repeat_interleave(self.num_attention_heads, dim=0)
        if self.norm_in is not None:
            hidden_states = self.norm_in(hidden_states)
        for block in self.transformer_blocks:
            hidden_states = block(hidden_states, attention_mask=attention_mask)
        hidden_states = self.norm_out(hidden_states)
        hidden_states = hidden_states[:, -1] if self.prd_embedding is not None else hidden_states[:, prefix:]
        predicted = self.proj_to_clip_embeddings(hidden_states)
        if not return_dict:
            return (predicted,)
        return PriorTransformerOutput(predicted_image_embedding=predicted)

    def post_process_latents(self, prior_latents: torch.Tensor) -> torch.Tensor:
        """Un-normalise predicted embeddings: ``latents * clip_std + clip_mean``."""
        out: torch.Tensor = prior_latents * self.clip_std.to(prior_latents.device) + self.clip_mean.to(
            prior_latents.device
        )
        return out
