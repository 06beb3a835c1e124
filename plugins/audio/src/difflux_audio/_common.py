"""What the latent text-to-audio pipelines (AudioLDM, MusicLDM, AudioLDM2) share.

Input checks, CLAP text embeddings, the spectrogram size of a clip length, the vocoder, and the
CLAP ranking of several waveforms per prompt. The denoising loop itself is Stable Diffusion's
(:mod:`difflux_stable_diffusion._base`), which these pipelines build on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from difflux.offload import runs_forward_hooks
from difflux.pipeline_utils import (
    check_batch,
    check_callback_inputs,
    check_finite,
    check_output_type,
    check_steps,
)
from difflux_stable_diffusion.prompts import (
    Prompt,
    PromptEmbeds,
    negative_prompts,
    prompt_list,
    repeat_per_image,
    tokenize,
)

from .extras import has_extra, require

__all__ = [
    "AUDIO_OUTPUT_TYPES",
    "AudioInputs",
    "Frames",
    "check_audio_inputs",
    "clap_text_embeds",
    "encode_clap_prompt",
    "rank_waveforms",
    "spectrogram_frames",
    "vocoder_waveform",
]

logger = logging.getLogger("difflux")

#: what ``output_type`` may be in the latent audio pipelines
AUDIO_OUTPUT_TYPES = ("np", "pt", "latent")


@dataclasses.dataclass
class AudioInputs:
    """The call arguments of a latent audio pipeline that are checked before any model runs."""

    prompt: Any = None
    negative_prompt: Any = None
    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    audio_length_in_s: float | None = None
    num_inference_steps: int = 10
    guidance_scale: float = 2.5
    num_waveforms_per_prompt: int | None = 1
    latents: torch.Tensor | None = None
    output_type: str = "np"
    generator: Any = None
    callback_on_step_end: Any = None
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)
    #: the width ``prompt_embeds`` must have (``None``: not checked)
    embeds_width: int | None = None
    #: ``prompt_embeds`` are ``(batch, features)`` (CLAP) rather than ``(batch, tokens, features)``
    pooled: bool = True

    @classmethod
    def of(cls, arguments: Mapping[str, Any], **overrides: Any) -> AudioInputs:
        """The inputs among a call's ``arguments`` (its ``locals()``), with ``overrides``."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**arguments, **overrides}.items() if k in names})


def _check_text(name: str, args: AudioInputs) -> int:
    if args.prompt is not None and args.prompt_embeds is not None:
        raise ValueError(f"{name}: pass prompt or prompt_embeds, not both")
    if args.prompt is None and args.prompt_embeds is None:
        raise ValueError(f"{name}: pass prompt (a string or a list of strings) or prompt_embeds")
    for key in ("prompt", "negative_prompt"):
        value = getattr(args, key)
        if value is not None and not isinstance(value, str) and (
            not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value)
        ):
            raise TypeError(f"{name}: {key} must be a string or a list of strings, got {type(value).__name__}")
    if args.negative_prompt is not None and args.negative_prompt_embeds is not None:
        raise ValueError(f"{name}: pass negative_prompt or negative_prompt_embeds, not both")
    prompts = prompt_list(args.prompt)
    if prompts is not None:
        batch = len(prompts)
    else:
        embeds = args.prompt_embeds
        if not isinstance(embeds, torch.Tensor):
            raise TypeError(f"{name}: prompt_embeds must be a torch.Tensor, got {type(embeds).__name__}")
        batch = int(embeds.shape[0])
    if batch < 1:
        raise ValueError(f"{name}: prompt is an empty list; pass at least one prompt")
    if isinstance(args.negative_prompt, (list, tuple)) and len(args.negative_prompt) != batch:
        raise ValueError(
            f"{name}: got {len(args.negative_prompt)} negative prompts for {batch} prompts; pass one per prompt"
        )
    ndim = 2 if args.pooled else 3
    layout = "(batch, features)" if args.pooled else "(batch, tokens, features)"
    for key in ("prompt_embeds", "negative_prompt_embeds"):
        value = getattr(args, key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or value.ndim != ndim:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name}: {key} must be a {layout} tensor, got {shape}")
        if args.embeds_width is not None and value.shape[-1] != args.embeds_width:
            raise ValueError(
                f"{name}: {key} have {value.shape[-1]} features but the UNet takes {args.embeds_width}; "
                "encode them with this pipeline's text encoder"
            )
        check_finite(value, key, name)
    pos, neg = args.prompt_embeds, args.negative_prompt_embeds
    if pos is not None and neg is not None and pos.shape != neg.shape:
        raise ValueError(
            f"{name}: prompt_embeds have shape {tuple(pos.shape)} but negative_prompt_embeds {tuple(neg.shape)}; "
            "they must match"
        )
    return batch


def check_audio_inputs(pipe: Any, args: AudioInputs) -> int:
    """Check one call's inputs before any model runs; returns the number of prompts.

    :raises ValueError | TypeError: naming the argument, what was wrong and what to pass.
    """
    name = type(pipe).__name__
    batch = _check_text(name, args)
    check_steps(args.num_inference_steps, name)
    scale = args.guidance_scale
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"{name}: guidance_scale must be a finite number, got {scale!r}")
    seconds = args.audio_length_in_s
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise ValueError(f"{name}: audio_length_in_s must be a positive number of seconds, got {seconds!r}")
    per_prompt = args.num_waveforms_per_prompt
    if isinstance(per_prompt, bool) or not isinstance(per_prompt, int) or per_prompt < 1:
        raise ValueError(f"{name}: num_waveforms_per_prompt must be a positive int, got {per_prompt!r}")
    if args.latents is not None:
        if not isinstance(args.latents, torch.Tensor):
            raise TypeError(f"{name}: latents must be a torch.Tensor, got {type(args.latents).__name__}")
        check_finite(args.latents, "latents", name)
    check_output_type(args.output_type, AUDIO_OUTPUT_TYPES, name)
    check_batch(batch * per_prompt, args.generator)
    if args.callback_on_step_end is not None:
        if not callable(args.callback_on_step_end):
            raise TypeError(f"{name}: callback_on_step_end must be callable, got {type(args.callback_on_step_end)}")
        check_callback_inputs(args.callback_on_step_end_tensor_inputs, pipe._callback_tensor_inputs, name)
    return batch


# -- text ------------------------------------------------------------------------------------


@runs_forward_hooks  # it calls the component's parts: its offload hooks run around them
def clap_text_embeds(text_encoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """CLAP's projected text embedding, L2-normalised: ``(batch, projection_dim)`` float.

    Works for ``ClapTextModelWithProjection`` and ``ClapModel`` alike (both hold ``text_model`` and
    ``text_projection``), on transformers 4 and 5 (it does not rely on ``get_text_features``, whose
    return type changed in transformers 5). The offload hooks of ``text_encoder`` run around the call
    (model offload moves the whole component). CLAP: Wu et al. 2023, arXiv:2211.06687.
    """
    pooled = text_encoder.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    return F.normalize(text_encoder.text_projection(pooled), dim=-1)


def encode_clap_prompt(
    text_encoder: Any,
    tokenizer: Any,
    prompt: Prompt | None,
    *,
    device: torch.device,
    dtype: torch.dtype,
    num_waveforms_per_prompt: int = 1,
    guidance: bool = False,
    negative_prompt: Prompt | None = None,
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
) -> PromptEmbeds:
    """CLAP text embeddings ``(batch * waveforms_per_prompt, projection_dim)`` of the prompts and, when
    guiding, of the negative prompts (empty prompts when ``None``).

    As in Diffusers, negative prompts are padded (and truncated) to as many tokens as the embedding
    has features, which changes nothing for CLAP's 512 features and its 77-token prompts.
    """
    prompts = prompt_list(prompt)
    if prompt_embeds is None:
        if prompts is None:
            raise ValueError("pass prompt or prompt_embeds")
        inputs = tokenize(tokenizer, prompts)
        prompt_embeds = clap_text_embeds(
            text_encoder, inputs.input_ids.to(device), inputs.attention_mask.to(device)
        )
    batch = prompt_embeds.shape[0]
    embeds = PromptEmbeds(repeat_per_image(prompt_embeds.to(device=device, dtype=dtype), num_waveforms_per_prompt))
    if not guidance:
        return embeds
    if negative_prompt_embeds is None:
        negatives = negative_prompts(negative_prompt, prompt, batch)
        inputs = tokenize(tokenizer, negatives, max_length=embeds.embeds.shape[1], warn=False)
        negative_prompt_embeds = clap_text_embeds(
            text_encoder, inputs.input_ids.to(device), inputs.attention_mask.to(device)
        )
    embeds.negative = repeat_per_image(negative_prompt_embeds.to(device=device, dtype=dtype), num_waveforms_per_prompt)
    return embeds


# -- lengths and the vocoder -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Frames:
    """The spectrogram a clip needs: ``height`` frames generated (a multiple of the VAE's downscaling),
    of which the waveform keeps its first ``keep`` samples."""

    height: int
    keep: int


def spectrogram_frames(
    pipeline: str, vocoder: Any, vae_scale_factor: int, sample_size: int, audio_length_in_s: float | None
) -> Frames:
    """The spectrogram height for ``audio_length_in_s`` seconds (default: the UNet's ``sample_size``).

    One frame is ``prod(upsample_rates) / sampling_rate`` seconds of the vocoder's output.

    :raises ValueError: when the clip is shorter than one latent frame, or the vocoder's mel bins are
        not a multiple of the VAE's downscaling.
    """
    config = vocoder.config
    hop = float(np.prod(config.upsample_rates)) / config.sampling_rate
    seconds = audio_length_in_s if audio_length_in_s is not None else sample_size * vae_scale_factor * hop
    shortest = hop * vae_scale_factor
    if seconds < shortest:
        raise ValueError(
            f"{pipeline}: audio_length_in_s={seconds} is too short; this model needs at least {shortest} s"
        )
    if config.model_in_dim % vae_scale_factor:
        raise ValueError(
            f"{pipeline}: the vocoder takes {config.model_in_dim} mel bins, which the VAE's downscaling "
            f"({vae_scale_factor}) does not divide"
        )
    height = int(seconds / hop)
    keep = int(seconds * config.sampling_rate)
    if height % vae_scale_factor:
        rounded = math.ceil(height / vae_scale_factor) * vae_scale_factor
        logger.info(
            "%s: generating %s s (cut to %s s afterwards) so that the model can handle the length",
            pipeline, rounded * hop, seconds,
        )
        height = rounded
    return Frames(height, keep)


def vocoder_waveform(vocoder: Any, mel: torch.Tensor) -> torch.Tensor:
    """Waveforms ``(batch, samples)`` float32 on the CPU of log-mel spectrograms ``(batch, [1,] frames, bins)``."""
    if mel.ndim == 4:
        mel = mel.squeeze(1)
    waveform: torch.Tensor = vocoder(mel.to(vocoder.dtype))
    return waveform.cpu().float()


# -- ranking -------------------------------------------------------------------------------------


def rank_waveforms(
    clap: Any,
    tokenizer: Any,
    feature_extractor: Any,
    prompt: Prompt,
    audio: torch.Tensor,
    *,
    per_prompt: int,
    sample_rate: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The ``per_prompt`` waveforms that CLAP scores highest against each prompt, best first.

    ``audio``: ``(prompts * per_prompt, samples)`` at ``sample_rate``; it is resampled (librosa) to
    the feature extractor's rate and scored with ``ClapModel``'s ``logits_per_text``. As in
    Diffusers, each prompt ranks all generated waveforms. Without librosa (the ``[librosa]``
    extra) the waveforms stay in the order they were made, with a warning.
    """
    if not has_extra("librosa"):
        logger.warning(
            'ranking waveforms with CLAP needs librosa (pip install "difflux-audio[librosa]"); '
            "returning them in the order they were generated"
        )
        return audio
    librosa = require("librosa", "ranking waveforms with CLAP")
    inputs = tokenizer(prompt_list(prompt), return_tensors="pt", padding=True)
    rate = feature_extractor.sampling_rate
    resampled = librosa.resample(audio.numpy(), orig_sr=sample_rate, target_sr=rate)
    features = feature_extractor(list(resampled), return_tensors="pt", sampling_rate=rate).input_features
    inputs["input_features"] = features.type(dtype)
    logits = clap(**inputs.to(device)).logits_per_text
    best = torch.argsort(logits, dim=1, descending=True)[:, :per_prompt]
    return torch.index_select(audio, 0, best.reshape(-1).cpu())
