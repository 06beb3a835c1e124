"""Stable Diffusion 1.x / 2.x: text-to-image, image-to-image and inpainting."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler

from ._base import Denoise, Sampling, StableDiffusionBase
from ._base import _told as _told  # the once-only messages said so far (tests reset it)
from .checks import Inputs
from .images import ImageInput, preprocess_image, preprocess_mask
from .prompts import Prompt, PromptEmbeds, PromptEncoderMixin

__all__ = [
    "StableDiffusionComponents",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionPipeline",
]

logger = logging.getLogger("difflux")

Generator = torch.Generator | Sequence[torch.Generator] | None


def _fix_old_scheduler_config(scheduler: Any, pipeline: str, which: Sequence[str]) -> Any:
    """Old SD scheduler configs (``steps_offset`` 0, ``clip_sample`` on) give wrong images; fix as Diffusers does."""
    config = getattr(scheduler, "config", None)
    if config is None or not hasattr(scheduler, "from_config"):
        return scheduler
    fixes: dict[str, Any] = {}
    if "steps_offset" in config and config["steps_offset"] != 1:
        fixes["steps_offset"] = 1
    if "clip_sample" in which and config.get("clip_sample") is True:
        fixes["clip_sample"] = False
    if "skip_prk_steps" in which and config.get("skip_prk_steps") is False:
        fixes["skip_prk_steps"] = True
    if not fixes:
        return scheduler
    logger.warning(
        "%s: the scheduler config is outdated (%s); using %s instead. Update scheduler_config.json to silence this.",
        pipeline,
        ", ".join(f"{k}={config[k]!r}" for k in fixes),
        ", ".join(f"{k}={v!r}" for k, v in fixes.items()),
    )
    return type(scheduler).from_config(config, **fixes)


class _StableDiffusion(PromptEncoderMixin, StableDiffusionBase):
    """The components and prompt encoding of SD 1.x / 2.x pipelines."""

    _optional_components: ClassVar[tuple[str, ...]] = ("safety_checker", "feature_extractor", "image_encoder")
    #: outdated scheduler settings corrected on construction (besides ``steps_offset``), as Diffusers does;
    #: ``None``: the scheduler is used as given (Diffusers' SAG, Attend-and-Excite and GLIGEN pipelines)
    _scheduler_fixes: tuple[str, ...] | None = ("clip_sample",)

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Scheduler,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        image_encoder: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__()
        self.warn_about_safety_checker(safety_checker, feature_extractor, requires_safety_checker)
        if self._scheduler_fixes is not None:
            scheduler = _fix_old_scheduler_config(scheduler, type(self).__name__, self._scheduler_fixes)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )


    def run(self, timesteps: torch.Tensor, embeds: PromptEmbeds, opts: Sampling, total: int) -> Denoise:
        """The loop over ``timesteps`` conditioned on ``embeds`` (and the guidance embedding of distilled UNets)."""
        cond = self.guidance_embedding(opts.guidance_scale, total, embeds.embeds.dtype)
        return Denoise(timesteps, embeds.for_unet(), opts, timestep_cond=cond)


#: the SD 1.x / 2.x component set and prompt encoding, public for the families built on it (sd-guidance)
StableDiffusionComponents = _StableDiffusion


class StableDiffusionPipeline(_StableDiffusion):
    """Text-to-image with Stable Diffusion 1.x / 2.x."""

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Generate images for ``prompt``: check → encode → prepare latents → denoise → decode."""
        batch = self.check_inputs(Inputs.of(locals()))
        height, width = self.default_size(height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(locals())
        embeds = self.prompt_of(locals(), opts)
        steps = self.schedule(num_inference_steps, timesteps, sigmas)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        latents = self.denoise(latents, self.run(steps, embeds, opts, total), embeds.negative)
        return self.output(latents, output_type, return_dict, generator)


class StableDiffusionImg2ImgPipeline(_StableDiffusion):
    """Image-to-image with Stable Diffusion 1.x / 2.x: noise ``image`` to ``strength``, then denoise."""

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Transform ``image`` guided by ``prompt``."""
        total = self.check_inputs(Inputs.of(locals(), needs_image=True)) * num_images_per_prompt
        opts = self.sampling_of(locals())
        embeds = self.prompt_of(locals(), opts)
        pixels = self.image_input(image)
        steps = self.schedule(num_inference_steps, timesteps, sigmas, strength=strength)
        latents = self.image_latents(pixels, total, embeds.embeds.dtype, generator, per_output=True)
        latents = self.add_noise(latents, steps, generator)
        latents = self.denoise(latents, self.run(steps, embeds, opts, total), embeds.negative)
        return self.output(latents, output_type, return_dict, generator)


class StableDiffusionInpaintPipeline(_StableDiffusion):
    """Inpainting: repaint where ``mask_image`` is white.

    A 9-channel inpainting UNet sees the mask and the masked image's latents; a plain 4-channel
    UNet denoises everything and the known region is blended back after every step.
    """

    _scheduler_fixes = ("skip_prk_steps",)
    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents")

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        masked_image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 1.0,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Repaint the masked part of ``image`` guided by ``prompt``."""
        total = self.check_inputs(Inputs.of(locals(), needs_image=True, needs_mask=True)) * num_images_per_prompt
        height, width = self.default_size(height, width)
        blending = self.inpaint_blending()
        opts = self.sampling_of(locals())
        embeds = self.prompt_of(locals(), opts)
        steps = self.schedule(num_inference_steps, timesteps, sigmas, strength=strength)
        dtype = embeds.embeds.dtype
        if not (image is not None and mask_image is not None):
            raise RuntimeError(
                "StableDiffusionInpaintPipeline.__call__: internal check failed: "
                "image is not None and mask_image is not None"
            )
        pixels = preprocess_image(image, height, width, multiple=self.vae_scale_factor).to(dtype)
        shape = self.latent_shape(total, height, width, self.vae.config.latent_channels)
        latents, noise, image_latents = self.inpaint_latents(
            pixels, shape, steps, strength, generator, latents, blending=blending
        )
        mask = preprocess_mask(mask_image, height, width, multiple=self.vae_scale_factor)
        masked = masked_image_latents if masked_image_latents is not None else pixels * (mask < 0.5)
        mask, masked_latents = self.mask_latents(mask, masked, total, dtype, generator, opts.guidance)
        run = self.run(steps, embeds, opts, total)
        run = self.inpaint_run(run, mask, masked_latents, image_latents, noise, blending=blending)
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)
