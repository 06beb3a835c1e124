"""Latent Consistency Models: few-step text-to-image and image-to-image on the SD base.

Luo et al., *Latent Consistency Models: Synthesizing High-Resolution Images with Few-Step Inference*
(2023, arXiv:2310.04378). The UNet is guidance-distilled: the guidance scale enters as a
``timestep_cond`` embedding (``w - 1``, Algorithm 1), so there is no second, unconditional batch;
the :class:`~difflux_schedulers.lcm.LCMScheduler` takes each step to the consistency function's
clean estimate and re-noises it to the next timestep (none after the last).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.images import ImageInput
from difflux_stable_diffusion.prompts import Prompt, PromptEmbeds

from ._sd import SDComponents

__all__ = ["LatentConsistencyModelImg2ImgPipeline", "LatentConsistencyModelPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None


class _LatentConsistency(SDComponents):
    """What both LCM pipelines share: no classifier-free guidance, the guidance embedding, the LCM schedule."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs: tuple[str, ...] = ("latents", "denoised", "prompt_embeds")

    def uses_guidance(self, guidance_scale: float) -> bool:
        """Never: the guidance scale reaches the UNet through its ``timestep_cond`` embedding."""
        return False

    def check_lcm(self, original_inference_steps: int | None) -> None:
        """The UNet must be guidance-distilled and the scheduler must take ``original_inference_steps``.

        :raises ValueError: naming what to change (an LCM UNet has ``time_cond_proj_dim``; use ``LCMScheduler``).
        """
        name = type(self).__name__
        if self.unet.config.get("time_cond_proj_dim") is None:
            raise ValueError(
                f"{name}: the UNet has no time_cond_proj_dim, so it cannot take the guidance embedding; load an "
                "LCM-distilled UNet (or use StableDiffusionPipeline with LCMScheduler for LCM-LoRA)"
            )
        if "original_inference_steps" not in self.scheduler.config:
            raise ValueError(
                f"{name}: the scheduler is {type(self.scheduler).__name__}; LCM sampling needs LCMScheduler "
                "(LCMScheduler.from_config(pipe.scheduler.config))"
            )
        steps = original_inference_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1):
            raise ValueError(f"{name}: original_inference_steps must be a positive int or None, got {steps!r}")

    def lcm_schedule(
        self,
        num_inference_steps: int,
        timesteps: Sequence[int] | None,
        original_inference_steps: int | None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """Set the LCM schedule: ``num_inference_steps`` of the ``original_inference_steps``-step distillation
        schedule (its last ``strength`` part for image-to-image), or the given ``timesteps``."""
        options: dict[str, Any] = {"original_inference_steps": original_inference_steps, "strength": strength}
        if timesteps is not None:
            self.scheduler.set_timesteps(device=self.device, timesteps=list(timesteps), **options)
        else:
            self.scheduler.set_timesteps(num_inference_steps, self.device, **options)
        steps: torch.Tensor = self.scheduler.timesteps
        return steps

    def encode(
        self, prompt: Prompt | None, embeds: torch.Tensor | None, num_images_per_prompt: int, clip_skip: int | None
    ) -> PromptEmbeds:
        """The prompt embeddings alone (LCM has no negative prompt)."""
        return self.encode_prompt(
            prompt, num_images_per_prompt=num_images_per_prompt, prompt_embeds=embeds, clip_skip=clip_skip
        )

    def lcm_denoise(self, latents: torch.Tensor, steps: torch.Tensor, embeds: PromptEmbeds, opts: Any) -> torch.Tensor:
        """The SD loop with the guidance embedding; the scheduler's clean estimate is the ``denoised`` tensor."""
        run = self.run(steps, embeds, opts, latents.shape[0])
        run.extra["denoised"] = None
        return self.denoise(latents, run)


class LatentConsistencyModelPipeline(_LatentConsistency):
    """Text-to-image with a Latent Consistency Model in 1-8 steps (default 4)."""

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 4,
        original_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 8.5,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Generate images for ``prompt``.

        :param guidance_scale: the ``w`` the UNet was distilled for (embedded as ``w - 1``; 8.5 by default).
        :param original_inference_steps: length of the distillation schedule the steps are picked from
            (default: the scheduler's ``original_inference_steps``, 50).
        :returns: ``StableDiffusionPipelineOutput(images, nsfw_content_detected)`` or a tuple.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        batch = self.check_inputs(Inputs.of(locals()))
        self.check_lcm(original_inference_steps)
        height, width = self.default_size(height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(locals())
        embeds = self.encode(prompt, prompt_embeds, num_images_per_prompt, clip_skip)
        steps = self.lcm_schedule(num_inference_steps, timesteps, original_inference_steps)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        latents = self.lcm_denoise(latents, steps, embeds, opts)
        return self.output(latents, output_type, return_dict, generator)


class LatentConsistencyModelImg2ImgPipeline(_LatentConsistency):
    """Image-to-image with a Latent Consistency Model: noise ``image`` to ``strength``, then 1-8 LCM steps."""

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        num_inference_steps: int = 4,
        strength: float = 0.8,
        original_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 8.5,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Transform ``image`` guided by ``prompt``.

        :param strength: in ``[0, 1]``: how far into the distillation schedule ``image`` is noised
            (the LCM schedule is taken from its last ``strength`` part).
        :param latents: noised starting latents to use instead of noising ``image``.
        :returns: ``StableDiffusionPipelineOutput(images, nsfw_content_detected)`` or a tuple.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        total = self.check_inputs(Inputs.of(locals(), needs_image=True)) * num_images_per_prompt
        self.check_lcm(original_inference_steps)
        opts = self.sampling_of(locals())
        embeds = self.encode(prompt, prompt_embeds, num_images_per_prompt, clip_skip)
        pixels = self.image_input(image)
        steps = self.lcm_schedule(num_inference_steps, timesteps, original_inference_steps, strength)
        if latents is None:
            latents = self.image_latents(pixels, total, embeds.embeds.dtype, generator, per_output=True)
            latents = self.add_noise(latents, steps, generator)
        latents = self.lcm_denoise(latents.to(self.device), steps, embeds, opts)
        return self.output(latents, output_type, return_dict, generator)
