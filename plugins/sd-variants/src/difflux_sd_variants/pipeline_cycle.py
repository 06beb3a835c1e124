"""CycleDiffusion: image-to-image by sharing the DDIM noise between a source and a target prompt.

Wu and De la Torre, *A Latent Space of Stochastic Diffusion Models for Zero-Shot Image Editing and
Guidance* (ICCV 2023, arXiv:2210.05559). The source image's latents are encoded, noised to
``strength`` and walked down the source posterior ``q(x_{t-1} | x_t, x_0)``; at each step the
noise that the stochastic DDIM step (``eta > 0``) of the *source* prediction would need to land
on that posterior sample is recovered, and the *target* prompt's DDIM step reuses it, so the
output keeps the input's structure where the prompts agree.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.torch_utils import randn_tensor
from difflux_schedulers.ddim import DDIMScheduler
from difflux_schedulers.sampling import ddim_variance
from difflux_stable_diffusion._base import Denoise
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.images import ImageInput
from difflux_stable_diffusion.prompts import Prompt, PromptEmbeds

from ._sd import SDComponentsNoImageEncoder

__all__ = ["CycleDiffusionPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None


def _alphas(scheduler: DDIMScheduler, t: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``(previous timestep, alpha_bar_t, alpha_bar_prev)`` of the DDIM step from ``t``."""
    prev = t - scheduler.config.num_train_timesteps // int(scheduler.num_inference_steps or 1)
    alpha = scheduler.alphas_cumprod[t]
    alpha_prev = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
    return prev, alpha, alpha_prev


def posterior_sample(
    scheduler: DDIMScheduler, latents: torch.Tensor, t: int, clean: torch.Tensor, generator: Generator, eta: float
) -> torch.Tensor:
    """A draw of ``x_{t-1}`` from the DDIM posterior given ``x_t = latents`` and ``x_0 = clean`` (Song et al.
    2021, eq. 12 with the true noise); ``clean`` itself at the last step."""
    prev, alpha, alpha_prev = _alphas(scheduler, t)
    if prev <= 0:
        return clean
    std = eta * ddim_variance(alpha, alpha_prev) ** 0.5
    eps = (latents - alpha**0.5 * clean) / (1 - alpha) ** 0.5
    noise = std * randn_tensor(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    return alpha_prev**0.5 * clean + (1.0 - alpha_prev - std**2) ** 0.5 * eps + noise


def recovered_noise(
    scheduler: DDIMScheduler, target: torch.Tensor, latents: torch.Tensor, t: int, eps: torch.Tensor, eta: float
) -> torch.Tensor:
    """The unit noise ``z`` with which the DDIM step (``eta``) from ``latents`` with prediction ``eps`` lands on
    ``target`` (CycleDiffusion's shared latent code)."""
    _, alpha, alpha_prev = _alphas(scheduler, t)
    x0 = (latents - (1 - alpha) ** 0.5 * eps) / alpha**0.5
    if scheduler.config.clip_sample:
        x0 = torch.clamp(x0, -1, 1)
    variance = ddim_variance(alpha, alpha_prev)
    std = eta * variance**0.5
    mean = alpha_prev**0.5 * x0 + (1 - alpha_prev - std**2) ** 0.5 * eps
    return (target - mean) / (variance**0.5 * eta)


class CycleDiffusionPipeline(SDComponentsNoImageEncoder):
    """Text-guided image-to-image with Stable Diffusion 1.x / 2.x by CycleDiffusion (needs ``DDIMScheduler``)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _scheduler_fixes = ()  # steps_offset only, as Diffusers does
    _callback_tensor_inputs: tuple[str, ...] = ("latents", "prompt_embeds")
    _source: dict[str, Any]

    def denoise_step(
        self, run: Denoise, i: int, t: torch.Tensor, latents: torch.Tensor, tensors: dict[str, torch.Tensor | None]
    ) -> torch.Tensor:
        """One CycleDiffusion step: source and target predictions in one UNet batch, the source walked down its
        posterior, the target's DDIM step with the recovered noise."""
        src = self._source
        source, clean, eta = src["latents"], src["clean"], run.sampling.eta
        target_embeds = tensors["prompt_embeds"]
        if target_embeds is None:
            raise RuntimeError("CycleDiffusionPipeline.denoise_step: internal check failed: prompt_embeds")
        guiding = run.sampling.guidance
        if guiding:
            (src_neg, src_pos), (neg, pos) = src["embeds"].chunk(2), target_embeds.chunk(2)
            model_input = torch.cat([source, latents, source, latents])
            embeds = torch.cat([src_neg, neg, src_pos, pos])
        else:
            model_input, embeds = torch.cat([source, latents]), torch.cat([src["embeds"], target_embeds])
        prediction = self.predict_noise(run, t, model_input, embeds, tensors, step=i)
        if guiding:
            src_uncond, uncond, src_text, text = prediction.chunk(4)
            noise_pred = uncond + self._guidance_scale * (text - uncond)
            source_pred = src_uncond + src["guidance_scale"] * (src_text - src_uncond)
        else:
            source_pred, noise_pred = prediction.chunk(2)
        step = int(t)
        moved = posterior_sample(self.scheduler, source, step, clean, run.sampling.generator, eta)
        noise = recovered_noise(self.scheduler, moved, source, step, source_pred, eta)
        src["latents"] = moved
        out = self.scheduler.step(noise_pred, t, latents, eta=eta, variance_noise=noise, return_dict=False)
        return out[0]  # type: ignore[no-any-return]

    def __call__(
        self,
        prompt: Prompt | None = None,
        source_prompt: Prompt | None = None,
        image: ImageInput | None = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        source_guidance_scale: float = 1,
        num_images_per_prompt: int = 1,
        eta: float = 0.1,
        generator: Generator = None,
        prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Turn ``image``, described by ``source_prompt``, into what ``prompt`` describes.

        :param source_prompt: describes ``image`` (one per prompt).
        :param source_guidance_scale: guidance of the source prediction (1: none).
        :param eta: the DDIM noise weight; must be > 0 (the shared noise is what carries the image).
        :returns: ``StableDiffusionPipelineOutput(images, nsfw_content_detected)`` or a tuple.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        name = type(self).__name__
        batch = self.check_inputs(Inputs.of(locals(), needs_image=True))
        if not isinstance(self.scheduler, DDIMScheduler):
            given = type(self.scheduler).__name__
            raise TypeError(f"{name}: the scheduler is {given}; CycleDiffusion needs DDIMScheduler")
        sources = [source_prompt] if isinstance(source_prompt, str) else source_prompt
        if not isinstance(sources, (list, tuple)) or not all(isinstance(p, str) for p in sources):
            raise TypeError(f"{name}: source_prompt must be a string or a list of strings, got {source_prompt!r}")
        if len(sources) != batch:
            raise ValueError(f"{name}: got {len(sources)} source prompts for {batch} prompts; pass one per prompt")
        for key, value in (("source_guidance_scale", source_guidance_scale), ("eta", eta)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name}: {key} must be a finite number, got {value!r}")
        if eta <= 0:
            raise ValueError(f"{name}: eta must be > 0 (CycleDiffusion recovers the DDIM noise), got {eta!r}")
        total = batch * num_images_per_prompt
        opts = self.sampling(guidance_scale, 0.0, eta, generator, cross_attention_kwargs, callback_on_step_end,
                             callback_on_step_end_tensor_inputs, legacy=callback,
                             legacy_steps=callback_steps if callback is not None else None, clip_skip=clip_skip)
        embeds = self.prompt_of(locals(), opts)
        source: PromptEmbeds = self.encode_prompt(list(sources), num_images_per_prompt=num_images_per_prompt,
                                                  guidance=opts.guidance, clip_skip=clip_skip)
        pixels = self.image_input(image)
        steps = self.schedule(num_inference_steps, strength=strength)
        clean = self.image_latents(pixels, total, embeds.embeds.dtype, generator)
        latents = self.add_noise(clean, steps, generator)
        self._source = {"latents": latents, "clean": clean, "embeds": source.for_unet(),
                        "guidance_scale": float(source_guidance_scale)}
        try:
            latents = self.denoise(latents, Denoise(steps, embeds.for_unet(), opts), embeds.negative)
        finally:
            self._source = {}
        return self.output(latents, output_type, return_dict, generator)
