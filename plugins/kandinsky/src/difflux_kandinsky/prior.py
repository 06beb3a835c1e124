"""The unCLIP diffusion prior's steps, shared by Kandinsky 2.1 / 2.2 and unCLIP.

The prior (Ramesh et al., *Hierarchical Text-Conditional Image Generation with CLIP Latents*, 2022,
arXiv:2204.06125, sec. 2.1) denoises a CLIP image embedding ``(N, D)`` with a ``PriorTransformer``
conditioned on the CLIP text embedding, the text token states and their mask, under ``UnCLIPScheduler``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import StepCallback, step_callback

__all__ = ["PriorText", "denoise_prior", "encode_prior_prompt"]

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclasses.dataclass
class PriorText:
    """The prior's text conditioning: pooled embeddings ``(B, D)``, token states ``(B, T, W)``, bool mask ``(B, T)``."""

    embeds: torch.Tensor
    hidden_states: torch.Tensor
    mask: torch.Tensor


def _tokens(pipe: Any, tok: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    return inputs.input_ids.to(pipe.device), inputs.attention_mask.bool().to(pipe.device)


def encode_prior_prompt(
    pipe: Any,
    prompts: list[str],
    per_prompt: int,
    guidance: bool,
    negatives: list[str] | None,
    *,
    tokenizer: Any = None,
    text_encoder: Any = None,
) -> PriorText:
    """CLIP text conditioning through ``tokenizer`` / ``text_encoder`` (a ``CLIPTextModelWithProjection``;
    default: ``pipe.tokenizer`` / ``pipe.text_encoder``), repeated per image, ``[negative, positive]`` when
    guiding (negatives default to ``""``).

    Prompts longer than the tokenizer's ``model_max_length`` are truncated.
    """
    tokenizer = pipe.tokenizer if tokenizer is None else tokenizer
    text_encoder = pipe.text_encoder if text_encoder is None else text_encoder
    ids, mask = _tokens(pipe, tokenizer, prompts)
    out = text_encoder(ids)
    embeds, hidden = out.text_embeds, out.last_hidden_state
    embeds, hidden = embeds.repeat_interleave(per_prompt, 0), hidden.repeat_interleave(per_prompt, 0)
    mask = mask.repeat_interleave(per_prompt, 0)
    if guidance:
        neg_ids, neg_mask = _tokens(pipe, tokenizer, negatives if negatives is not None else [""] * len(prompts))
        neg = text_encoder(neg_ids)
        embeds = torch.cat([neg.text_embeds.repeat_interleave(per_prompt, 0), embeds])
        hidden = torch.cat([neg.last_hidden_state.repeat_interleave(per_prompt, 0), hidden])
        mask = torch.cat([neg_mask.repeat_interleave(per_prompt, 0), mask])
    return PriorText(embeds, hidden, mask)


def denoise_prior(
    pipe: Any,
    prior: Any,
    scheduler: Any,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    text: PriorText,
    generator: Generator,
    callback: StepCallback | None = None,
    callback_names: Sequence[str] = ("latents",),
) -> torch.Tensor:
    """Denoise image embeddings ``(N, D)`` over ``timesteps``; returns them un-normalised (CLIP scale).

    Guidance reads ``pipe._guidance_scale`` anew each step (it runs while that is ``> 1`` and ``text`` is
    doubled); ``pipe._interrupt`` stops the loop; a step callback may replace ``latents``,
    ``prompt_embeds``, ``text_encoder_hidden_states`` and ``text_mask``.
    """
    tensors: dict[str, Any] = {
        "latents": latents,
        "prompt_embeds": text.embeds,
        "text_encoder_hidden_states": text.hidden_states,
        "text_mask": text.mask,
    }
    pipe._num_timesteps = len(timesteps)
    # unCLIP's scheduler takes the next timestep explicitly; a DDPM prior (Stable unCLIP) finds it itself
    explicit = "prev_timestep" in inspect.signature(scheduler.step).parameters
    with pipe.progress_bar(total=len(timesteps)) as bar:
        for i, t in enumerate(timesteps):
            if pipe._interrupt:
                break
            latents = tensors["latents"]
            guiding = pipe._guidance_scale > 1 and tensors["prompt_embeds"].shape[0] == 2 * len(latents)
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if guiding else latents, t)
            keep = slice(-model_input.shape[0], None)
            predicted = prior(
                model_input,
                timestep=t,
                proj_embedding=tensors["prompt_embeds"][keep],
                encoder_hidden_states=tensors["text_encoder_hidden_states"][keep],
                attention_mask=tensors["text_mask"][keep],
            ).predicted_image_embedding
            if guiding:
                uncond, cond = predicted.chunk(2)
                predicted = uncond + pipe._guidance_scale * (cond - uncond)
            extra = {"prev_timestep": timesteps[i + 1] if i + 1 < len(timesteps) else None} if explicit else {}
            tensors["latents"] = scheduler.step(predicted, t, latents, generator=generator, **extra).prev_sample
            if callback is not None:
                tensors = step_callback(pipe, callback, i, t, tensors, callback_names)
            bar.update()
    out: torch.Tensor = prior.post_process_latents(tensors["latents"])
    return out
