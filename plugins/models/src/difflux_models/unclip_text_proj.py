"""``UnCLIPTextProjModel``: unCLIP's decoder conditioning (Ramesh et al. 2022): combines the CLIP
image embedding with the text embeddings into extra context tokens for cross-attention and an
addition to the decoder UNet's timestep embedding."""

from __future__ import annotations

import torch
from difflux.modeling import ModelMixin
from torch import nn

__all__ = ["UnCLIPTextProjModel"]


class UnCLIPTextProjModel(ModelMixin):
    """Config keys as Diffusers' ``UnCLIPTextProjModel`` (``time_embed_dim`` and
    ``cross_attention_dim`` are required)."""

    def __init__(
        self,
        *,
        clip_extra_context_tokens: int = 4,
        clip_embeddings_dim: int = 768,
        time_embed_dim: int,
        cross_attention_dim: int,
    ) -> None:
        super().__init__()
        self.learned_classifier_free_guidance_embeddings = nn.Parameter(torch.zeros(clip_embeddings_dim))
        self.embedding_proj = nn.Linear(clip_embeddings_dim, time_embed_dim)
        self.clip_image_embeddings_project_to_time_embeddings = nn.Linear(clip_embeddings_dim, time_embed_dim)
        self.clip_extra_context_tokens = clip_extra_context_tokens
        self.clip_extra_context_tokens_proj = nn.Linear(
            clip_embeddings_dim, clip_extra_context_tokens * cross_attention_dim
        )
        self.encoder_hidden_states_proj = nn.Linear(clip_embeddings_dim, cross_attention_dim)
        self.text_encoder_hidden_states_norm = nn.LayerNorm(cross_attention_dim)

    def forward(
        self,
        *,
        image_embeddings: torch.Tensor,
        prompt_embeds: torch.Tensor,
        text_encoder_hidden_states: torch.Tensor,
        do_classifier_free_guidance: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(encoder states (B, tokens + S, cross_attention_dim), time-embedding addition (B, time_embed_dim))``.

        :param image_embeddings: CLIP image embeddings ``(B', clip_embeddings_dim)``; with
            ``do_classifier_free_guidance`` the learned unconditional embedding is prepended for
            each, so ``B = 2 B'``.
        :param prompt_embeds: pooled text embeddings ``(B, clip_embeddings_dim)``.
        :param text_encoder_hidden_states: ``(B, S, clip_embeddings_dim)``.
        :raises ValueError: if the image and prompt batches differ.
        """
        if do_classifier_free_guidance:
            uncond = self.learned_classifier_free_guidance_embeddings[None].expand(image_embeddings.shape[0], -1)
            image_embeddings = torch.cat([uncond, image_embeddings], dim=0)
        if image_embeddings.shape[0] != prompt_embeds.shape[0]:
            raise ValueError(
                f"UnCLIPTextProjModel: {image_embeddings.shape[0]} image embeddings (after classifier-free "
                f"guidance) for {prompt_embeds.shape[0]} prompt embeddings; the batches must match"
            )
        batch = prompt_embeds.shape[0]
        time_embeds = self.clip_image_embeddings_project_to_time_embeddings(image_embeddings) + self.embedding_proj(
            prompt_embeds
        )
        extra = self.clip_extra_context_tokens_proj(image_embeddings).reshape(batch, -1, self.clip_extra_context_tokens)
        text = self.text_encoder_hidden_states_norm(self.encoder_hidden_states_proj(text_encoder_hidden_states))
        return torch.cat([extra.permute(0, 2, 1), text], dim=1), time_embeds
