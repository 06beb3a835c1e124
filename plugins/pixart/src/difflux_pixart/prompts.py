"""Prompt encoding with a T5 encoder and its attention mask (PixArt-alpha / -sigma).

Captions are preprocessed (:mod:`difflux_pixart.captions`), padded to ``max_sequence_length``
tokens, encoded, and repeated per image; the keep-mask goes with the embeddings so the
transformer's cross-attention skips padding. Tokenizing and repetition are the SD family's
(:mod:`difflux_stable_diffusion.prompts`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from difflux_stable_diffusion.prompts import prompt_batch_size, prompt_list, repeat_per_image, tokenize

from .captions import preprocess_captions

__all__ = ["MaskedPromptEmbeds", "encode_prompt_t5"]

Prompt = str | Sequence[str]


@dataclasses.dataclass
class MaskedPromptEmbeds:
    """Caption embeddings ``(batch * images_per_prompt, tokens, width)`` and their keep-masks
    ``(batch * images_per_prompt, tokens)`` (1 keep, 0 padding); the negative pair is set when guiding."""

    embeds: torch.Tensor
    mask: torch.Tensor
    negative: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None

    def for_model(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embeddings, mask)`` as the transformer sees them: ``[negative, positive]`` stacked when guiding."""
        if self.negative is None or self.negative_mask is None:
            return self.embeds, self.mask
        return torch.cat([self.negative, self.embeds]), torch.cat([self.negative_mask, self.mask])


def _encode(
    text_encoder: Any, tokenizer: Any, texts: list[str], length: int, device: torch.device, *, warn: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = tokenize(tokenizer, texts, length, warn=warn)
    mask = inputs.attention_mask.to(device)
    embeds: torch.Tensor = text_encoder(inputs.input_ids.to(device), attention_mask=mask)[0]
    return embeds, mask


def encode_prompt_t5(
    text_encoder: Any,
    tokenizer: Any,
    prompt: Prompt | None,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    guidance: bool,
    negative_prompt: Prompt | None = "",
    num_images_per_prompt: int = 1,
    prompt_embeds: torch.Tensor | None = None,
    prompt_attention_mask: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    negative_prompt_attention_mask: torch.Tensor | None = None,
    clean_caption: bool = False,
    max_sequence_length: int = 120,
    pipeline: str = "PixArt",
) -> MaskedPromptEmbeds:
    """Encode captions with a T5 encoder (its last hidden state), keeping the attention mask.

    ``negative_prompt``: one string for every prompt, or one per prompt; with ``guidance`` and no
    ``negative_prompt_embeds`` it is encoded to as many tokens as the prompts. Given embeddings
    need their masks (``prompt_attention_mask`` ...). Embeddings are cast to ``dtype``.
    """
    prompt_batch_size(prompt, prompt_embeds)
    if prompt_embeds is None:
        texts = prompt_list(prompt)
        if texts is None:
            raise RuntimeError("encode_prompt_t5: internal check failed: texts is not None")
        texts = preprocess_captions(texts, clean_caption, pipeline)
        prompt_embeds, prompt_attention_mask = _encode(
            text_encoder, tokenizer, texts, max_sequence_length, device, warn=True
        )
    if prompt_attention_mask is None:
        raise ValueError(f"{pipeline}: prompt_embeds need prompt_attention_mask (1 for tokens, 0 for padding)")
    batch = prompt_embeds.shape[0]
    embeds = repeat_per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    mask = repeat_per_image(prompt_attention_mask.to(device), num_images_per_prompt)
    if not guidance:
        return MaskedPromptEmbeds(embeds, mask)
    if negative_prompt_embeds is None:
        if isinstance(negative_prompt, str) or negative_prompt is None:
            negatives = [negative_prompt or ""] * batch
        else:
            negatives = [str(n) for n in negative_prompt]
        texts = preprocess_captions(negatives, clean_caption, pipeline)
        negative_prompt_embeds, negative_prompt_attention_mask = _encode(
            text_encoder, tokenizer, texts, prompt_embeds.shape[1], device, warn=False
        )
    if negative_prompt_attention_mask is None:
        raise ValueError(
            f"{pipeline}: negative_prompt_embeds need negative_prompt_attention_mask (1 for tokens, 0 for padding)"
        )
    negative = repeat_per_image(negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    negative_mask = repeat_per_image(negative_prompt_attention_mask.to(device), num_images_per_prompt)
    return MaskedPromptEmbeds(embeds, mask, negative, negative_mask)
