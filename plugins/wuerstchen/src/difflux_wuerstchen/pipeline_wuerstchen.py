"""Würstchen's prior (stage C) and decoder (stage B + A) pipelines.

Both stages run :func:`denoise`, the one loop of this plugin: the SD base's loop does not fit, as
Würstchen's models take the noise *ratio* ``r`` in ``[0, 1]`` instead of a timestep, the guided batch
is ``[conditional, unconditional]`` combined with ``torch.lerp``, the schedule's last entry (0) is not
a step, and ``DDPMWuerstchenScheduler.step`` takes no ``eta``. Prompt handling reuses
:mod:`difflux_stable_diffusion.prompts` (tokenising, negatives, repeats).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from difflux.image import numpy_to_pil
from difflux.outputs import BaseOutput
from difflux.pipeline import DiffusionPipeline
from difflux.pipeline_utils import (
    StepCallback,
    check_batch,
    check_callback_inputs,
    check_finite,
    check_output_type,
    check_steps,
    prepare_noise,
    step_callback,
)
from difflux_stable_diffusion.prompts import negative_prompts, prompt_batch_size, prompt_list, tokenize

__all__ = [
    "WuerstchenDecoderPipeline",
    "WuerstchenPriorPipeline",
    "WuerstchenPriorPipelineOutput",
    "denoise",
]

Generator = torch.Generator | list[torch.Generator] | None
Prompt = str | list[str]


@dataclasses.dataclass
class WuerstchenPriorPipelineOutput(BaseOutput):
    """``image_embeddings``: ``(N, c_in, ceil(H / 42.67), ceil(W / 42.67))`` float (numpy with ``"np"``)."""

    image_embeddings: torch.Tensor | np.ndarray


@dataclasses.dataclass
class ImagePipelineOutput(BaseOutput):
    """``images``: PIL images, ``(N, H, W, 3)`` numpy in ``[0, 1]``, ``(N, 3, H, W)`` tensor, or latents."""

    images: Any


def denoise(
    pipe: DiffusionPipeline,
    model: Callable[[torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor],
    latents: torch.Tensor,
    tensors: dict[str, Any],
    *,
    num_inference_steps: int | None,
    timesteps: Sequence[float] | None,
    guidance_scale: float,
    generator: Generator,
    callback: StepCallback | None,
    callback_names: Sequence[str],
) -> torch.Tensor:
    """Run ``model(x, r, tensors)`` and ``pipe.scheduler`` over the schedule; the final latents.

    ``latents``: ``(N, C, h, w)`` start; ``tensors``: what the model reads by callback name (a
    step callback may replace them; ``latents`` among them). While guiding (``guidance_scale > 1``)
    the model sees ``[x, x]`` against ``[conditional, unconditional]`` conditioning and the two
    predictions are combined as ``lerp(uncond, cond, guidance_scale)`` (classifier-free guidance,
    Ho & Salimans 2022).
    """
    scheduler = pipe.scheduler  # type: ignore[attr-defined]
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=timesteps, device=pipe.device)
    else:
        scheduler.set_timesteps(num_inference_steps, device=pipe.device)
    steps = scheduler.timesteps[:-1]
    pipe._num_timesteps = len(steps)  # type: ignore[attr-defined]
    guiding = guidance_scale > 1
    tensors = {**tensors, "latents": latents}
    for i, t in enumerate(pipe.progress_bar(steps)):
        x = tensors["latents"]
        ratio = t.expand(x.shape[0]).to(x.dtype)
        if guiding:
            cond, uncond = model(torch.cat([x, x]), torch.cat([ratio, ratio]), tensors).chunk(2)
            pred = torch.lerp(uncond, cond, guidance_scale)
        else:
            pred = model(x, ratio, tensors)
        tensors["latents"] = scheduler.step(pred, ratio, x, generator=generator).prev_sample
        if callback is not None:
            tensors = step_callback(pipe, callback, i, t, tensors, callback_names)
    out: torch.Tensor = tensors["latents"]
    return out


def _check_common(
    name: str,
    num_images_per_prompt: Any,
    num_inference_steps: Any,
    timesteps: Sequence[float] | None,
    guidance_scale: Any,
    callback_names: Sequence[str],
    allowed: Sequence[str],
) -> None:
    if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, numbers.Integral):
        raise TypeError(f"{name}: num_images_per_prompt must be an int, got {num_images_per_prompt!r}")
    if num_images_per_prompt < 1:
        raise ValueError(f"{name}: num_images_per_prompt={num_images_per_prompt} must be at least 1")
    if timesteps is None:
        check_steps(num_inference_steps, name)
    elif len(timesteps) < 2 or any(b >= a for a, b in itertools.pairwise(timesteps)):
        raise ValueError(
            f"{name}: timesteps must be at least two decreasing noise ratios ending at 0, got {list(timesteps)}"
        )
    if (
        isinstance(guidance_scale, bool)
        or not isinstance(guidance_scale, numbers.Real)
        or not math.isfinite(guidance_scale)
    ):
        raise TypeError(f"{name}: guidance_scale must be a finite number, got {guidance_scale!r}")
    check_callback_inputs(callback_names, allowed, name)


class _WuerstchenText:
    """CLIP text token states as Würstchen reads them: the last hidden state, with the attention mask."""

    text_encoder: Any
    tokenizer: Any
    device: torch.device

    def _states(self, prompts: list[str]) -> torch.Tensor:
        inputs = tokenize(self.tokenizer, prompts)
        out = self.text_encoder(inputs.input_ids.to(self.device), attention_mask=inputs.attention_mask.to(self.device))
        states: torch.Tensor = out.last_hidden_state
        return states

    def encode_prompt(
        self,
        prompt: Prompt | None,
        num_images_per_prompt: int,
        guidance: bool,
        negative_prompt: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prompt states (N, T, W), negative states (N, T, W) or None)``, ``N = prompts x images``."""
        batch = prompt_batch_size(prompt, prompt_embeds)
        if prompt_embeds is None:
            prompts = prompt_list(prompt)
            if prompts is None:
                raise ValueError("pass prompt or prompt_embeds")
            prompt_embeds = self._states(prompts)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else prompt_embeds.dtype
        prompt_embeds = prompt_embeds.to(device=self.device, dtype=dtype).repeat_interleave(num_images_per_prompt, 0)
        if not guidance:
            return prompt_embeds, None
        if negative_prompt_embeds is None:
            negative_prompt_embeds = self._states(negative_prompts(negative_prompt, prompt, batch))
        negative_prompt_embeds = negative_prompt_embeds.to(device=self.device, dtype=dtype)
        return prompt_embeds, negative_prompt_embeds.repeat_interleave(num_images_per_prompt, 0)


def _check_prompts(
    name: str,
    prompt: Any,
    negative_prompt: Any,
    prompt_embeds: torch.Tensor | None,
    negative_prompt_embeds: torch.Tensor | None,
) -> int:
    if not isinstance(prompt, (str, list, type(None))):
        raise TypeError(f"{name}: prompt must be a string or a list of strings, got {type(prompt).__name__}")
    try:
        batch = prompt_batch_size(prompt, prompt_embeds)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{name}: {exc}") from None
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError(f"{name}: pass negative_prompt or negative_prompt_embeds, not both")
    if negative_prompt is not None:
        try:
            negative_prompts(negative_prompt, prompt, batch)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{name}: {exc}") from None
    if prompt_embeds is not None:
        check_finite(prompt_embeds, "prompt_embeds", name)
        if negative_prompt_embeds is not None and negative_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError(
                f"{name}: negative_prompt_embeds {tuple(negative_prompt_embeds.shape)} and "
                f"prompt_embeds {tuple(prompt_embeds.shape)} must have one shape"
            )
    return batch


class WuerstchenPriorPipeline(_WuerstchenText, DiffusionPipeline):
    """Stage C: prompt → image embeddings ``(N, c_in, ceil(height / resolution_multiple), ...)``.

    The output is de-normalised as Diffusers does (``latents * latent_mean - latent_std``).
    Components: ``tokenizer``, ``text_encoder`` (CLIP), ``prior`` (:class:`~.modeling.WuerstchenPrior`),
    ``scheduler`` (``DDPMWuerstchenScheduler``).
    """

    model_cpu_offload_seq = "text_encoder->prior"
    _optional_components: ClassVar[tuple[str, ...]] = ()
    _callback_tensor_inputs: tuple[str, ...] = ("latents", "text_encoder_hidden_states", "negative_prompt_embeds")

    prior: Any
    scheduler: Any

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: Any,
        prior: Any,
        scheduler: Any,
        latent_mean: float = 42.0,
        latent_std: float = 1.0,
        resolution_multiple: float = 42.67,
    ) -> None:
        super().__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, prior=prior, scheduler=scheduler)
        self.register_to_config(latent_mean=latent_mean, latent_std=latent_std, resolution_multiple=resolution_multiple)

    @torch.no_grad()
    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int = 1024,
        width: int = 1024,
        num_inference_steps: int = 60,
        timesteps: list[float] | None = None,
        guidance_scale: float = 8.0,
        negative_prompt: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pt",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> WuerstchenPriorPipelineOutput | tuple[Any]:
        """Image embeddings for ``prompt``; ``output_type`` ``"pt"`` or ``"np"``.

        :raises TypeError | ValueError: for a bad argument (named), before any model runs.
        """
        name = type(self).__name__
        batch = _check_prompts(name, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
        _check_common(
            name,
            num_images_per_prompt,
            num_inference_steps,
            timesteps,
            guidance_scale,
            callback_on_step_end_tensor_inputs,
            self._callback_tensor_inputs,
        )
        check_output_type(output_type, ("pt", "np"), name)
        for label, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name}: {label} must be a positive int of pixels, got {value!r}")
        total = batch * int(num_images_per_prompt)
        check_batch(total, generator)
        config = self.config
        shape = (
            total,
            self.prior.config.c_in,
            math.ceil(height / config.resolution_multiple),
            math.ceil(width / config.resolution_multiple),
        )
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"{name}: latents have shape {tuple(latents.shape)}, expected {shape}")
        guidance = guidance_scale > 1
        self._guidance_scale = guidance_scale

        embeds, negative = self.encode_prompt(
            prompt, num_images_per_prompt, guidance, negative_prompt, prompt_embeds, negative_prompt_embeds
        )
        states = torch.cat([embeds, negative]) if negative is not None else embeds
        start = prepare_noise(
            shape,
            generator=generator,
            device=self.device,
            dtype=states.dtype,
            init_noise_sigma=self.scheduler.init_noise_sigma,
            latents=latents,
        )

        def model(x: torch.Tensor, r: torch.Tensor, tensors: dict[str, Any]) -> torch.Tensor:
            out: torch.Tensor = self.prior(x, r=r, c=tensors["text_encoder_hidden_states"])
            return out

        result = denoise(
            self,
            model,
            start,
            {"text_encoder_hidden_states": states, "negative_prompt_embeds": negative},
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            guidance_scale=guidance_scale,
            generator=generator,
            callback=callback_on_step_end,
            callback_names=callback_on_step_end_tensor_inputs,
        )
        result = result * config.latent_mean - config.latent_std
        self.maybe_free_model_hooks()
        out: torch.Tensor | np.ndarray = result.cpu().float().numpy() if output_type == "np" else result
        return WuerstchenPriorPipelineOutput(out) if return_dict else (out,)


class WuerstchenDecoderPipeline(_WuerstchenText, DiffusionPipeline):
    """Stages B and A: image embeddings (from the prior) and the prompt → images.

    ``image_embeddings`` ``(B, c, h, w)`` give latents ``(B * num_images_per_prompt, 4, h *
    latent_dim_scale, w * latent_dim_scale)``, decoded by the VQ-GAN (times its ``scale_factor``)
    into images clamped to ``[0, 1]``. Components: ``tokenizer``, ``text_encoder``, ``decoder``
    (:class:`~.modeling.WuerstchenDiffNeXt`), ``scheduler``, ``vqgan`` (:class:`~.modeling.PaellaVQModel`).
    """

    model_cpu_offload_seq = "text_encoder->decoder->vqgan"
    _optional_components: ClassVar[tuple[str, ...]] = ()
    _callback_tensor_inputs: tuple[str, ...] = ("latents", "text_encoder_hidden_states", "negative_prompt_embeds")

    decoder: Any
    vqgan: Any
    scheduler: Any

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: Any,
        decoder: Any,
        scheduler: Any,
        vqgan: Any,
        latent_dim_scale: float = 10.67,
    ) -> None:
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, decoder=decoder, scheduler=scheduler, vqgan=vqgan
        )
        self.register_to_config(latent_dim_scale=latent_dim_scale)

    def check_call(
        self,
        prompt: Any,
        negative_prompt: Any,
        num_inference_steps: Any,
        timesteps: Sequence[float] | None,
        guidance_scale: Any,
        num_images_per_prompt: Any,
        output_type: Any,
        callback_names: Sequence[str],
    ) -> None:
        """Check the decoder's options (all but the embeddings).

        :raises TypeError | ValueError: naming the argument.
        """
        name = type(self).__name__
        if prompt is None or not isinstance(prompt, (str, list)):
            raise TypeError(f"{name}: prompt must be a string or a list of strings, got {type(prompt).__name__}")
        _check_prompts(name, prompt, negative_prompt, None, None)
        _check_common(
            name,
            num_images_per_prompt,
            num_inference_steps,
            timesteps,
            guidance_scale,
            callback_names,
            self._callback_tensor_inputs,
        )
        check_output_type(output_type, ("pil", "np", "pt", "latent"), name)

    @torch.no_grad()
    def __call__(
        self,
        image_embeddings: torch.Tensor | list[torch.Tensor] | np.ndarray,
        prompt: Prompt | None = None,
        num_inference_steps: int = 12,
        timesteps: list[float] | None = None,
        guidance_scale: float = 0.0,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | Any:
        """Images for ``image_embeddings`` ``(B, c, h, w)`` and ``prompt`` (one per embedding, or one for all).

        :raises TypeError | ValueError: for a bad argument (named), before any model runs.
        """
        name = type(self).__name__
        if isinstance(image_embeddings, list):
            if not image_embeddings or not all(isinstance(e, torch.Tensor) for e in image_embeddings):
                raise TypeError(f"{name}: image_embeddings must be a tensor, an array or a non-empty list of tensors")
            image_embeddings = torch.cat(image_embeddings, dim=0)
        if isinstance(image_embeddings, np.ndarray):
            image_embeddings = torch.from_numpy(image_embeddings)
        if not isinstance(image_embeddings, torch.Tensor) or image_embeddings.ndim != 4:
            got = (
                tuple(image_embeddings.shape)
                if isinstance(image_embeddings, torch.Tensor)
                else type(image_embeddings).__name__
            )
            raise TypeError(f"{name}: image_embeddings must be a (B, C, h, w) tensor from the prior, got {got}")
        check_finite(image_embeddings, "image_embeddings", name)
        self.check_call(
            prompt,
            negative_prompt,
            num_inference_steps,
            timesteps,
            guidance_scale,
            num_images_per_prompt,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        batch = image_embeddings.shape[0]
        prompts = prompt_list(prompt) or []
        if (batch * num_images_per_prompt) % len(prompts):
            raise ValueError(
                f"{name}: {len(prompts)} prompts for {batch * num_images_per_prompt} images; pass one "
                f"prompt, or one per image embedding"
            )
        total = batch * int(num_images_per_prompt)
        check_batch(total, generator)
        scale = self.config.latent_dim_scale
        shape = (total, 4, int(image_embeddings.shape[2] * scale), int(image_embeddings.shape[3] * scale))
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"{name}: latents have shape {tuple(latents.shape)}, expected {shape}")
        guidance = guidance_scale > 1
        self._guidance_scale = guidance_scale

        # Diffusers repeats the prompt list to the embedding count (the prompt is usually one string)
        embeds, negative = self.encode_prompt(prompt, total // len(prompts), guidance, negative_prompt)
        states = torch.cat([embeds, negative]) if negative is not None else embeds
        dtype = self.decoder.dtype
        effnet = image_embeddings.to(device=self.device, dtype=dtype)
        if guidance:
            effnet = torch.cat([effnet, torch.zeros_like(effnet)])
        start = prepare_noise(
            shape,
            generator=generator,
            device=self.device,
            dtype=dtype,
            init_noise_sigma=self.scheduler.init_noise_sigma,
            latents=latents,
        )

        def model(x: torch.Tensor, r: torch.Tensor, tensors: dict[str, Any]) -> torch.Tensor:
            out: torch.Tensor = self.decoder(
                x, r=r, effnet=tensors["effnet"], clip=tensors["text_encoder_hidden_states"]
            )
            return out

        result = denoise(
            self,
            model,
            start,
            {"text_encoder_hidden_states": states, "negative_prompt_embeds": negative, "effnet": effnet},
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            guidance_scale=guidance_scale,
            generator=generator,
            callback=callback_on_step_end,
            callback_names=callback_on_step_end_tensor_inputs,
        )
        images: Any = result
        if output_type != "latent":
            pixels = self.vqgan.decode(self.vqgan.config.scale_factor * result).sample.clamp(0, 1)
            if output_type == "pt":
                images = pixels
            else:
                images = pixels.permute(0, 2, 3, 1).cpu().float().numpy()
                if output_type == "pil":
                    images = numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images) if return_dict else images
