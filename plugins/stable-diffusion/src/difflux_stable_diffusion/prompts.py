"""Prompt handling for the whole Stable Diffusion family, in one place.

Tokenize (warning with the text that truncation drops), encode with CLIP skip, repeat per
image, and lay out the embeddings for classifier-free guidance (negative first, then
positive). SD 1.x/2.x use one encoder (:func:`encode_prompt`); SDXL uses two and a pooled
embedding (:func:`encode_prompt_sdxl`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "PromptEmbeds",
    "PromptEncoderMixin",
    "encode_prompt",
    "encode_prompt_pooled",
    "encode_prompt_sdxl",
    "negative_prompts",
    "prompt_batch_size",
    "prompt_list",
    "repeat_per_image",
    "tokenize",
]

logger = logging.getLogger("difflux")

Prompt = str | Sequence[str]


@dataclasses.dataclass
class PromptEmbeds:
    """Text conditioning for a batch: ``(batch * images_per_prompt, seq, dim)`` tensors.

    ``negative`` is set when classifier-free guidance runs; ``pooled`` / ``negative_pooled``
    are SDXL's pooled embeddings.
    """

    embeds: torch.Tensor
    negative: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    negative_pooled: torch.Tensor | None = None

    def for_unet(self) -> torch.Tensor:
        """The embeddings the UNet sees: ``[negative, positive]`` stacked when guiding."""
        return self.embeds if self.negative is None else torch.cat([self.negative, self.embeds])

    def pooled_for_unet(self) -> torch.Tensor:
        """SDXL's pooled embeddings, laid out like :meth:`for_unet`."""
        if self.pooled is None:
            raise ValueError("no pooled prompt embeddings (SDXL needs pooled_prompt_embeds)")
        if self.negative is None:
            return self.pooled
        if self.negative_pooled is None:
            raise ValueError("classifier-free guidance needs negative_pooled_prompt_embeds too")
        return torch.cat([self.negative_pooled, self.pooled])


def prompt_list(prompt: Prompt | None) -> list[str] | None:
    """A prompt (or list of prompts) as a list; ``None`` stays ``None``."""
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return [prompt]
    if not all(isinstance(p, str) for p in prompt):
        raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
    return list(prompt)


def prompt_batch_size(prompt: Prompt | None, prompt_embeds: torch.Tensor | None) -> int:
    """How many prompts were given, as text or as embeddings (exactly one of them)."""
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("pass prompt or prompt_embeds, not both")
    if prompt is None and prompt_embeds is None:
        raise ValueError("pass prompt (a string or a list of strings) or prompt_embeds")
    prompts = prompt_list(prompt)
    if prompts is not None:
        return len(prompts)
    if prompt_embeds is None:
        raise RuntimeError("prompt_batch_size: internal check failed: prompt_embeds is not None")
    return int(prompt_embeds.shape[0])


def tokenize(tokenizer: Any, prompts: list[str], max_length: int | None = None, *, warn: bool = True) -> Any:
    """Token ids padded (and truncated) to ``max_length`` (the tokenizer's limit by default).

    When truncation drops tokens, one warning names the dropped text of each prompt.
    """
    limit = tokenizer.model_max_length if max_length is None else max_length
    inputs = tokenizer(prompts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
    if warn:
        full = tokenizer(prompts, padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] >= inputs.input_ids.shape[-1] and not torch.equal(full, inputs.input_ids):
            # the last kept position holds the end token, so dropping starts one before the limit
            dropped = tokenizer.batch_decode(full[:, limit - 1 : -1])
            logger.warning(
                "the prompt is longer than the %d tokens the text encoder takes; this part was dropped: %s",
                limit,
                dropped,
            )
    return inputs


def repeat_per_image(tensor: torch.Tensor, images_per_prompt: int) -> torch.Tensor:
    """Repeat each sample ``images_per_prompt`` times along the batch (``a a b b``, not ``a b a b``)."""
    return tensor.repeat_interleave(images_per_prompt, dim=0)


def _negatives(negative_prompt: Prompt | None, prompt: Prompt | None, batch_size: int) -> list[str]:
    if negative_prompt is None:
        return [""] * batch_size
    if prompt is not None and isinstance(prompt, str) != isinstance(negative_prompt, str):
        raise TypeError(
            f"negative_prompt must be the same kind as prompt (a string, or a list of strings), got "
            f"{type(negative_prompt).__name__} and {type(prompt).__name__}"
        )
    negatives = prompt_list(negative_prompt)
    if negatives is None:
        raise RuntimeError("_negatives: internal check failed: negatives is not None")
    if len(negatives) == 1 and batch_size > 1 and isinstance(negative_prompt, str):
        return negatives * batch_size
    if len(negatives) != batch_size:
        raise ValueError(f"got {len(negatives)} negative prompts for {batch_size} prompts; pass one per prompt")
    return negatives


def negative_prompts(negative_prompt: Prompt | None, prompt: Prompt | None, batch_size: int) -> list[str]:
    """The negative prompt of each of ``batch_size`` prompts: empty strings when ``None``, one string for all,
    or one per prompt.

    :raises TypeError: when ``negative_prompt`` is a string and ``prompt`` a list (or the reverse).
    :raises ValueError: when a list does not hold one negative prompt per prompt.
    """
    return _negatives(negative_prompt, prompt, batch_size)


def _uses_attention_mask(text_encoder: Any) -> bool:
    return bool(getattr(text_encoder.config, "use_attention_mask", False))


def _final_layer_norm(text_encoder: Any) -> Any:
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def _encode_sd(
    text_encoder: Any,
    tokenizer: Any,
    prompts: list[str],
    device: torch.device,
    *,
    clip_skip: int | None,
    max_length: int | None = None,
    warn: bool = True,
) -> torch.Tensor:
    inputs = tokenize(tokenizer, prompts, max_length, warn=warn)
    mask = inputs.attention_mask.to(device) if _uses_attention_mask(text_encoder) else None
    ids = inputs.input_ids.to(device)
    if clip_skip is None:
        out: torch.Tensor = text_encoder(ids, attention_mask=mask)[0]
        return out
    hidden = text_encoder(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    # clip_skip=1 takes the penultimate layer; the final layer norm still applies
    return _final_layer_norm(text_encoder)(hidden[-(clip_skip + 1)])  # type: ignore[no-any-return]


def encode_prompt(
    text_encoder: Any,
    tokenizer: Any,
    prompt: Prompt | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    num_images_per_prompt: int = 1,
    guidance: bool = False,
    negative_prompt: Prompt | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    clip_skip: int | None = None,
) -> PromptEmbeds:
    """Encode prompts with one CLIP text encoder (SD 1.x / 2.x).

    ``clip_skip=k`` takes the hidden state ``k`` layers before the last (through the final
    layer norm) for the prompt; as in Diffusers, negative prompts always use the last layer.
    With ``guidance``, negative embeddings come from ``negative_prompt_embeds``, or from
    ``negative_prompt`` (empty prompts when ``None``).
    """
    batch_size = prompt_batch_size(prompt, prompt_embeds)
    prompts = prompt_list(prompt)
    if prompt_embeds is None:
        if prompts is None:
            raise RuntimeError("encode_prompt: internal check failed: prompts is not None")
        prompt_embeds = _encode_sd(text_encoder, tokenizer, prompts, device, clip_skip=clip_skip)
    prompt_embeds = repeat_per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
    negative = None
    if guidance:
        if negative_prompt_embeds is None:
            if negative_prompt is not None and not isinstance(negative_prompt, (str, list, tuple)):
                raise TypeError(f"negative_prompt must be a string or a list of strings, got {negative_prompt!r}")
            negatives = _negatives(negative_prompt, prompt, batch_size)
            negative_prompt_embeds = _encode_sd(
                text_encoder,
                tokenizer,
                negatives,
                device,
                clip_skip=None,
                max_length=prompt_embeds.shape[1],
                warn=False,
            )
        elif negative_prompt is not None:
            raise ValueError("pass negative_prompt or negative_prompt_embeds, not both")
        negative = repeat_per_image(negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
        if negative.shape != prompt_embeds.shape:
            raise ValueError(
                f"negative_prompt_embeds have shape {tuple(negative.shape)} but prompt_embeds "
                f"{tuple(prompt_embeds.shape)}; they must match"
            )
    return PromptEmbeds(prompt_embeds, negative)


def _encode_sdxl_one(
    text_encoder: Any,
    tokenizer: Any,
    prompts: list[str],
    device: torch.device,
    *,
    layer: int,
    max_length: int | None = None,
    warn: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(hidden state at layer, pooled output or None)`` of one SDXL text encoder."""
    inputs = tokenize(tokenizer, prompts, max_length, warn=warn)
    out = text_encoder(inputs.input_ids.to(device), output_hidden_states=True)
    first = out[0]
    pooled = first if first.ndim == 2 else None  # CLIPTextModelWithProjection: the projected text embeds
    return out.hidden_states[layer], pooled


def encode_prompt_sdxl(
    encoders: Sequence[tuple[Any, Any]],
    prompt: Prompt | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    prompt_2: Prompt | None = None,
    num_images_per_prompt: int = 1,
    guidance: bool = False,
    negative_prompt: Prompt | None = None,
    negative_prompt_2: Prompt | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    pooled_prompt_embeds: torch.Tensor | None = None,
    negative_pooled_prompt_embeds: torch.Tensor | None = None,
    clip_skip: int | None = None,
    zeros_for_empty_negative: bool = True,
) -> PromptEmbeds:
    """Encode prompts with SDXL's text encoders (``[(tokenizer, text_encoder), ...]``, one or two).

    The hidden states of every encoder (the penultimate layer, or ``clip_skip`` more layers
    back) are concatenated along the feature axis; the pooled embedding comes from the first
    encoder with a projection head (``text_encoder_2``). ``prompt_2`` / ``negative_prompt_2``
    go to the second encoder (default: the same text). With ``zeros_for_empty_negative`` (the
    ``force_zeros_for_empty_prompt`` config) and no negative prompt, the negative embeddings
    are zeros.
    """
    batch_size = prompt_batch_size(prompt, prompt_embeds)
    prompts = prompt_list(prompt)
    if prompt_embeds is None:
        if prompts is None:
            raise RuntimeError("encode_prompt_sdxl: internal check failed: prompts is not None")
        second = prompt_list(prompt_2) or prompts
        layer = -2 if clip_skip is None else -(clip_skip + 2)
        hidden: list[torch.Tensor] = []
        for (tokenizer, text_encoder), texts in zip(encoders, [prompts, second]):
            state, pooled = _encode_sdxl_one(text_encoder, tokenizer, texts, device, layer=layer)
            hidden.append(state)
            if pooled_prompt_embeds is None and pooled is not None:
                pooled_prompt_embeds = pooled
        prompt_embeds = torch.cat(hidden, dim=-1)
    if pooled_prompt_embeds is None:
        raise ValueError("prompt_embeds were given without pooled_prompt_embeds; SDXL needs both")

    if guidance and negative_prompt_embeds is None:
        if negative_prompt is None and negative_prompt_2 is None and zeros_for_empty_negative:
            negative_prompt_embeds = torch.zeros_like(prompt_embeds)
            negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
        else:
            first_neg = negative_prompt if negative_prompt is not None else ""
            second_neg = negative_prompt_2 if negative_prompt_2 is not None else first_neg
            negatives = [_negatives(first_neg, None, batch_size), _negatives(second_neg, None, batch_size)]
            hidden = []
            negative_pooled_prompt_embeds = None
            for (tokenizer, text_encoder), texts in zip(encoders, negatives):
                state, pooled = _encode_sdxl_one(
                    text_encoder, tokenizer, texts, device, layer=-2, max_length=prompt_embeds.shape[1], warn=False
                )
                hidden.append(state)
                if negative_pooled_prompt_embeds is None and pooled is not None:
                    negative_pooled_prompt_embeds = pooled
            negative_prompt_embeds = torch.cat(hidden, dim=-1)

    embeds = PromptEmbeds(
        repeat_per_image(prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt),
        pooled=repeat_per_image(pooled_prompt_embeds.to(device=device), num_images_per_prompt),
    )
    if guidance:
        if negative_prompt_embeds is None:
            raise RuntimeError("encode_prompt_sdxl: internal check failed: negative_prompt_embeds is not None")
        if negative_pooled_prompt_embeds is None:
            raise ValueError("negative_prompt_embeds were given without negative_pooled_prompt_embeds; SDXL needs both")
        embeds.negative = repeat_per_image(negative_prompt_embeds.to(dtype=dtype, device=device), num_images_per_prompt)
        embeds.negative_pooled = repeat_per_image(
            negative_pooled_prompt_embeds.to(device=device), num_images_per_prompt
        )
    return embeds


def _last_and_pooled(text_encoder: Any, tokenizer: Any, prompts: list[str], device: torch.device, **kw: Any) -> Any:
    out = text_encoder(tokenize(tokenizer, prompts, **kw).input_ids.to(device), output_hidden_states=True)
    return out.hidden_states[-1], out.pooler_output


def encode_prompt_pooled(
    text_encoder: Any,
    tokenizer: Any,
    prompt: Prompt | None,
    *,
    device: torch.device,
    guidance: bool = False,
    negative_prompt: Prompt | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    pooled_prompt_embeds: torch.Tensor | None = None,
    negative_pooled_prompt_embeds: torch.Tensor | None = None,
) -> PromptEmbeds:
    """The last hidden state (before the final layer norm) and the pooled output of one CLIP encoder.

    What the latent upscaler conditions on. Embeddings are only used when given with their pooled
    counterpart; otherwise the text is encoded.
    """
    batch_size = prompt_batch_size(prompt, prompt_embeds)
    if prompt_embeds is None or pooled_prompt_embeds is None:
        prompts = prompt_list(prompt)
        if prompts is None:
            raise ValueError("prompt_embeds were given without pooled_prompt_embeds; pass both, or prompt")
        prompt_embeds, pooled_prompt_embeds = _last_and_pooled(text_encoder, tokenizer, prompts, device)
    embeds = PromptEmbeds(prompt_embeds, pooled=pooled_prompt_embeds)
    if guidance:
        if negative_prompt_embeds is None or negative_pooled_prompt_embeds is None:
            negatives = _negatives(negative_prompt, prompt, batch_size)
            negative_prompt_embeds, negative_pooled_prompt_embeds = _last_and_pooled(
                text_encoder, tokenizer, negatives, device, max_length=prompt_embeds.shape[1], warn=False
            )
        embeds.negative, embeds.negative_pooled = negative_prompt_embeds, negative_pooled_prompt_embeds
    return embeds


class PromptEncoderMixin:
    """``encode_prompt`` for a pipeline with one CLIP ``text_encoder`` / ``tokenizer`` pair (SD 1.x/2.x
    and the families built on it): the pipeline's own device, and the text encoder's dtype (the UNet's
    when the text encoder is absent because ``prompt_embeds`` are passed)."""

    def encode_prompt(
        self: Any,
        prompt: Prompt | None,
        *,
        num_images_per_prompt: int = 1,
        guidance: bool = False,
        negative_prompt: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
    ) -> PromptEmbeds:
        """Prompt (and negative prompt) embeddings, repeated per image; see :func:`encode_prompt`."""
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        return encode_prompt(
            self.text_encoder,
            self.tokenizer,
            prompt,
            device=self.device,
            dtype=dtype,
            num_images_per_prompt=num_images_per_prompt,
            guidance=guidance,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            clip_skip=clip_skip,
        )

    def prompt_of(self: Any, a: Mapping[str, Any], opts: Any) -> PromptEmbeds:
        """The prompt embeddings (:meth:`encode_prompt`) of a call from its arguments by name (its ``locals()``):
        ``prompt``, ``num_images_per_prompt``, ``negative_prompt``, ``prompt_embeds``, ``negative_prompt_embeds`` and
        ``clip_skip`` (each ``None`` / 1 where the call does not take it), guided as the loop options ``opts`` say."""
        return self.encode_prompt(  # type: ignore[no-any-return]
            a.get("prompt"),
            num_images_per_prompt=a.get("num_images_per_prompt", 1),
            guidance=opts.guidance,
            negative_prompt=a.get("negative_prompt"),
            prompt_embeds=a.get("prompt_embeds"),
            negative_prompt_embeds=a.get("negative_prompt_embeds"),
            clip_skip=a.get("clip_skip"),
        )
