"""The one input validator of the Stable Diffusion family.

Every SD pipeline calls :func:`check_inputs` first, before any model runs, with the inputs it
takes (the rest stay ``None``). It checks prompts against embeddings, embeddings against each
other and against the UNet's cross-attention width, sizes, images and masks, latents, step
options, ``output_type``, generators and callbacks, and raises one clear error naming the
argument and what to pass instead.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from difflux.pipeline_utils import (
    check_batch,
    check_callback_inputs,
    check_embeds_width,
    check_finite,
    check_image_size,
    check_output_type,
    check_size,
    check_steps,
)

from .images import is_image_input
from .prompts import prompt_list

__all__ = ["OUTPUT_TYPES", "Inputs", "check_inputs"]

#: what ``output_type`` may be in every SD pipeline
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclasses.dataclass
class Inputs:
    """The call arguments the validator looks at; a pipeline fills those it takes."""

    prompt: Any = None
    prompt_2: Any = None
    negative_prompt: Any = None
    negative_prompt_2: Any = None
    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None
    height: int | None = None
    width: int | None = None
    image: Any = None
    mask_image: Any = None
    masked_image_latents: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    strength: float | None = None
    num_inference_steps: int | None = 50
    timesteps: Sequence[int] | None = None
    sigmas: Sequence[float] | None = None
    denoising_start: float | None = None
    denoising_end: float | None = None
    guidance_scale: float = 7.5
    output_type: str = "pil"
    num_images_per_prompt: int = 1
    generator: Any = None
    callback_on_step_end: Any = None
    callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",)
    #: the pipeline needs ``image`` / ``mask_image``
    needs_image: bool = False
    needs_mask: bool = False
    #: the pipeline takes a prompt (not: image variations)
    takes_prompt: bool = True
    #: SDXL: pooled embeddings come with prompt embeddings
    pooled: bool = False

    @classmethod
    def of(cls, arguments: Mapping[str, Any], **overrides: Any) -> Inputs:
        """The inputs among a call's ``arguments`` (its ``locals()``), with ``overrides`` (flags, replaced values)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in {**arguments, **overrides}.items() if k in names})


def _cross_attention_width(unet: Any) -> int | None:
    dim = unet.config.get("cross_attention_dim") if unet is not None else None
    if isinstance(dim, (list, tuple)):
        return int(dim[0]) if len(set(dim)) == 1 else None
    return int(dim) if isinstance(dim, numbers.Integral) else None


def _check_prompts(name: str, args: Inputs) -> int:
    """The batch of prompts, with prompt / embedding pairs checked."""
    if args.prompt is not None and args.prompt_embeds is not None:
        raise ValueError(f"{name}: pass prompt or prompt_embeds, not both")
    if args.prompt is None and args.prompt_embeds is None:
        raise ValueError(f"{name}: pass prompt (a string or a list of strings) or prompt_embeds")
    for key in ("prompt", "prompt_2", "negative_prompt", "negative_prompt_2"):
        value = getattr(args, key)
        if (
            value is not None
            and not isinstance(value, str)
            and (not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value))
        ):
            raise TypeError(f"{name}: {key} must be a string or a list of strings, got {type(value).__name__}")
    if args.prompt_2 is not None and args.prompt is None:
        raise ValueError(f"{name}: prompt_2 needs prompt (prompt_embeds already hold both encoders' features)")
    if args.negative_prompt is not None and args.negative_prompt_embeds is not None:
        raise ValueError(f"{name}: pass negative_prompt or negative_prompt_embeds, not both")
    for key in ("prompt_embeds", "negative_prompt_embeds"):  # type and rank before the batch is read from them
        value = getattr(args, key)
        if value is not None and (not isinstance(value, torch.Tensor) or value.ndim != 3):
            check_embeds_width(value, None, key, name, "")  # raises its message (the full check runs in _check_embeds)
    prompts = prompt_list(args.prompt)
    batch = len(prompts) if prompts is not None else int(args.prompt_embeds.shape[0])  # type: ignore[union-attr]
    if batch < 1:
        raise ValueError(f"{name}: prompt is an empty list; pass at least one prompt")
    for key in ("prompt_2",):
        others = prompt_list(getattr(args, key))
        if others is not None and len(others) not in (1, batch) and not isinstance(getattr(args, key), str):
            raise ValueError(f"{name}: got {len(others)} entries in {key} for {batch} prompts; pass one per prompt")
    if isinstance(args.negative_prompt, (list, tuple)) and len(args.negative_prompt) != batch:
        raise ValueError(
            f"{name}: got {len(args.negative_prompt)} negative prompts for {batch} prompts; pass one per prompt"
        )
    return batch


def _check_embeds(name: str, args: Inputs, unet: Any) -> None:
    width = _cross_attention_width(unet)
    what = f"the UNet's cross_attention_dim (the text encoder{'s' if args.pooled else ''}' width)"
    check_embeds_width(args.prompt_embeds, width, "prompt_embeds", name, what)
    check_embeds_width(args.negative_prompt_embeds, width, "negative_prompt_embeds", name, what)
    pos, neg = args.prompt_embeds, args.negative_prompt_embeds
    if pos is not None and neg is not None and pos.shape != neg.shape:
        raise ValueError(
            f"{name}: prompt_embeds have shape {tuple(pos.shape)} but negative_prompt_embeds {tuple(neg.shape)}; "
            "classifier-free guidance stacks them, so they must match: encode both to the same number of "
            f"tokens ({pos.shape[1]}) and batch ({pos.shape[0]})"
        )
    if not args.pooled:
        return
    if pos is not None and args.pooled_prompt_embeds is None:
        raise ValueError(f"{name}: prompt_embeds need pooled_prompt_embeds too (SDXL conditions on both)")
    if neg is not None and args.negative_pooled_prompt_embeds is None:
        raise ValueError(
            f"{name}: negative_prompt_embeds need negative_pooled_prompt_embeds too (SDXL conditions on both)"
        )
    for key in ("pooled_prompt_embeds", "negative_pooled_prompt_embeds"):
        value = getattr(args, key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or value.ndim != 2:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{name}: {key} must be a (batch, features) tensor, got {shape}")
        check_finite(value, key, name)
    pooled, neg_pooled = args.pooled_prompt_embeds, args.negative_pooled_prompt_embeds
    if pooled is not None and neg_pooled is not None and pooled.shape != neg_pooled.shape:
        raise ValueError(
            f"{name}: pooled_prompt_embeds have shape {tuple(pooled.shape)} but negative_pooled_prompt_embeds "
            f"{tuple(neg_pooled.shape)}; they must match"
        )
    if pos is not None and pooled is not None and pooled.shape[0] != pos.shape[0]:
        raise ValueError(
            f"{name}: pooled_prompt_embeds hold {pooled.shape[0]} prompts but prompt_embeds {pos.shape[0]}; "
            "they must match"
        )


def _check_schedule(name: str, args: Inputs) -> None:
    if args.timesteps is not None and args.sigmas is not None:
        raise ValueError(f"{name}: pass timesteps or sigmas, not both")
    custom = args.timesteps is not None or args.sigmas is not None
    check_steps(args.num_inference_steps, name, custom=custom)
    for key in ("timesteps", "sigmas"):
        values = getattr(args, key)
        if values is not None:
            if len(values) == 0:
                raise ValueError(f"{name}: {key} is empty; pass at least one value")
            check_finite(torch.as_tensor(list(values), dtype=torch.float64), key, name)
    strength = args.strength
    if strength is not None and (
        isinstance(strength, bool)
        or not isinstance(strength, numbers.Real)
        or math.isnan(strength)
        or not 0.0 <= strength <= 1.0
    ):
        raise ValueError(f"{name}: strength must be a number in [0, 1], got {strength!r}")
    for key in ("denoising_start", "denoising_end"):
        value = getattr(args, key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0
        ):
            raise ValueError(f"{name}: {key} must be a fraction strictly between 0 and 1, got {value!r}")
    start, end = args.denoising_start, args.denoising_end
    if start is not None and end is not None and float(start) >= float(end):
        raise ValueError(f"{name}: denoising_start={start} must be below denoising_end={end}")
    scale = args.guidance_scale
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"{name}: guidance_scale must be a finite number, got {scale!r}")


def _check_images(name: str, args: Inputs, minimum: int, latent_channels: int | None) -> None:
    for key, needed in (("image", args.needs_image), ("mask_image", args.needs_mask)):
        value = getattr(args, key)
        if value is None:
            if needed:
                raise ValueError(f"{name} needs {key}= (a PIL image, a numpy array or a torch tensor)")
            continue
        if not is_image_input(value):
            raise TypeError(
                f"{name}: {key} must be a PIL image, a numpy array or a torch tensor (or a list of them), "
                f"got {type(value).__name__}"
            )
        first = value[0] if isinstance(value, (list, tuple)) else value
        is_latents = (
            key == "image"
            and isinstance(first, torch.Tensor)
            and first.ndim >= 3
            and first.shape[-3] == latent_channels
        )
        check_image_size(value, 1 if is_latents else minimum, key, name)
    if args.masked_image_latents is not None:
        check_finite(args.masked_image_latents, "masked_image_latents", name)


def check_inputs(pipe: Any, args: Inputs, *, image_minimum: int | None = None) -> int:
    """Check one call's inputs before any model runs; returns the number of prompts (or images).

    :param pipe: the pipeline (its UNet's ``cross_attention_dim``, VAE scale factor and callback
        tensor names are what the inputs are checked against).
    :param image_minimum: the smallest image side in pixels (default: one latent pixel,
        ``pipe.vae_scale_factor``).
    :raises ValueError | TypeError: naming the argument, what was wrong and what to pass.
    """
    name = type(pipe).__name__
    batch = _check_prompts(name, args) if args.takes_prompt else 1
    if args.takes_prompt:
        _check_embeds(name, args, getattr(pipe, "unet", None))
    _check_schedule(name, args)
    check_size(args.height, args.width, 8, name)
    vae = getattr(pipe, "vae", None)
    latent_channels = vae.config.get("latent_channels") if vae is not None else None
    minimum = image_minimum if image_minimum is not None else pipe.vae_scale_factor
    _check_images(name, args, minimum, latent_channels)
    if args.latents is not None:
        if not isinstance(args.latents, torch.Tensor):
            raise TypeError(f"{name}: latents must be a torch.Tensor, got {type(args.latents).__name__}")
        check_finite(args.latents, "latents", name)
    check_output_type(args.output_type, OUTPUT_TYPES, name)
    images = args.num_images_per_prompt
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise ValueError(f"{name}: num_images_per_prompt must be a positive int, got {images!r}")
    check_batch(batch * images, args.generator)
    if args.callback_on_step_end is not None:
        if not callable(args.callback_on_step_end):
            raise TypeError(f"{name}: callback_on_step_end must be callable, got {type(args.callback_on_step_end)}")
        check_callback_inputs(args.callback_on_step_end_tensor_inputs, pipe._callback_tensor_inputs, name)
    return batch
