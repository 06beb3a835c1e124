"""Stable Diffusion 1.x / 2.x: text-to-image, image-to-image and inpainting."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import StepCallback, check_batch
from difflux.protocols import Scheduler
from difflux.torch_utils import randn_tensor

from ._base import Denoise, StableDiffusionBase
from ._common import StableDiffusionPipelineOutput, encode_latents, set_schedule, strength_schedule
from .images import ImageInput, preprocess_image, preprocess_mask
from .prompts import Prompt, PromptEmbeds, encode_prompt, prompt_batch_size

__all__ = ["StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionPipeline"]

logger = logging.getLogger("difflux")
_told: set[str] = set()

Generator = torch.Generator | Sequence[torch.Generator] | None


def _say_once(key: str, level: int, message: str, *args: Any) -> None:
    if key not in _told:
        _told.add(key)
        logger.log(level, message, *args)


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


class _StableDiffusion(StableDiffusionBase):
    """The components and prompt encoding of SD 1.x / 2.x pipelines."""

    _optional_components = ("safety_checker", "feature_extractor", "image_encoder")
    #: outdated scheduler settings corrected on construction (besides ``steps_offset``), as Diffusers does
    _scheduler_fixes: tuple[str, ...] = ("clip_sample",)

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
        name = type(self).__name__
        if safety_checker is None and requires_safety_checker:
            _say_once(
                f"{name}:no-checker",
                logging.WARNING,
                "%s runs without a safety checker although requires_safety_checker=True; pass "
                "requires_safety_checker=False to say this is intended",
                name,
            )
        elif safety_checker is None:
            _say_once(f"{name}:off", logging.INFO, "%s: no safety checker (requires_safety_checker=False)", name)
        scheduler = _fix_old_scheduler_config(scheduler, name, self._scheduler_fixes)
        if safety_checker is not None and feature_extractor is None:
            raise ValueError(f"{name}: a safety_checker needs a feature_extractor to prepare its input")
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

    def encode_prompt(
        self,
        prompt: Prompt | None,
        *,
        num_images_per_prompt: int = 1,
        guidance: bool = False,
        negative_prompt: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
    ) -> PromptEmbeds:
        """Prompt (and negative prompt) embeddings, repeated per image; see :func:`~.prompts.encode_prompt`."""
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

    def _output(
        self, latents: torch.Tensor, output_type: str, return_dict: bool, generator: Generator, dtype: torch.dtype
    ) -> Any:
        if output_type == "latent":
            images: Any = latents
            flags = None
        else:
            decoded = self.decode(latents, generator)
            decoded, flags = self.run_safety_checker(decoded, dtype)
            images = self.finish(decoded, output_type, flags)
        if not return_dict:
            return images, flags
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=flags)

    def image_latents(self, pixels: torch.Tensor, total: int, dtype: torch.dtype, generator: Generator) -> torch.Tensor:
        """Scaled VAE latents of ``pixels`` (or the latents given), repeated to ``total`` samples."""
        pixels = pixels.to(device=self.device, dtype=dtype)
        if pixels.shape[1] == self.vae.config.latent_channels:
            latents = pixels
        else:
            latents = encode_latents(self.vae, pixels, generator) * self.vae.config.scaling_factor
        if total % latents.shape[0]:
            raise ValueError(f"cannot spread {latents.shape[0]} images over {total} outputs; pass 1 or {total} images")
        return latents.repeat(total // latents.shape[0], 1, 1, 1)

    def _prepare(
        self,
        prompt: Prompt | None,
        prompt_embeds: torch.Tensor | None,
        num_images_per_prompt: int,
        generator: Generator,
        callback: StepCallback | None,
        callback_names: Sequence[str],
    ) -> int:
        batch = prompt_batch_size(prompt, prompt_embeds)
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        check_batch(batch * num_images_per_prompt, generator)
        self.check_callback(callback, callback_names)
        return batch


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
    ) -> Any:
        """Generate images for ``prompt``: check → encode → prepare latents → denoise → decode."""
        height, width = self.default_size(height, width)
        batch = self._prepare(
            prompt,
            prompt_embeds,
            num_images_per_prompt,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        guidance = self.uses_guidance(guidance_scale)
        embeds = self.encode_prompt(
            prompt,
            num_images_per_prompt=num_images_per_prompt,
            guidance=guidance,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            clip_skip=clip_skip,
        )
        steps, _ = set_schedule(self.scheduler, num_inference_steps, self.device, timesteps=timesteps, sigmas=sigmas)
        total = batch * num_images_per_prompt
        shape = (total, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        latents = self.prepare_latents(shape, embeds.embeds.dtype, generator, latents)
        run = Denoise(
            timesteps=steps,
            embeds=embeds.for_unet(),
            guidance_scale=guidance_scale,
            guidance=guidance,
            guidance_rescale=guidance_rescale,
            eta=eta,
            generator=generator,
            timestep_cond=self.guidance_embedding(guidance_scale, total, latents.dtype),
            cross_attention_kwargs=cross_attention_kwargs,
            callback=callback_on_step_end,
            callback_names=callback_on_step_end_tensor_inputs,
        )
        latents = self.denoise(latents, run, embeds.negative)
        return self._output(latents, output_type, return_dict, generator, embeds.embeds.dtype)

    def prepare_latents(
        self, shape: tuple[int, ...], dtype: torch.dtype, generator: Generator, latents: torch.Tensor | None
    ) -> torch.Tensor:
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        scaled: torch.Tensor = latents.to(self.device) * self.scheduler.init_noise_sigma
        return scaled


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
    ) -> Any:
        """Transform ``image`` guided by ``prompt``."""
        if image is None:
            raise ValueError(f"{type(self).__name__} needs image=")
        batch = self._prepare(
            prompt,
            prompt_embeds,
            num_images_per_prompt,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        guidance = self.uses_guidance(guidance_scale)
        embeds = self.encode_prompt(
            prompt,
            num_images_per_prompt=num_images_per_prompt,
            guidance=guidance,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            clip_skip=clip_skip,
        )
        pixels = preprocess_image(
            image, multiple=self.vae_scale_factor, latent_channels=self.vae.config.latent_channels
        )
        steps, count = set_schedule(
            self.scheduler, num_inference_steps, self.device, timesteps=timesteps, sigmas=sigmas
        )
        steps, count = strength_schedule(self.scheduler, steps, count, strength)
        if count < 1:
            raise ValueError(
                f"strength={strength} leaves no denoising steps out of {num_inference_steps}; raise either"
            )
        total = batch * num_images_per_prompt
        dtype = embeds.embeds.dtype
        latents = self.noised_image_latents(pixels, steps[:1].repeat(total), total, dtype, generator)
        run = Denoise(
            timesteps=steps,
            embeds=embeds.for_unet(),
            guidance_scale=guidance_scale,
            guidance=guidance,
            guidance_rescale=guidance_rescale,
            eta=eta,
            generator=generator,
            timestep_cond=self.guidance_embedding(guidance_scale, total, latents.dtype),
            cross_attention_kwargs=cross_attention_kwargs,
            callback=callback_on_step_end,
            callback_names=callback_on_step_end_tensor_inputs,
        )
        latents = self.denoise(latents, run, embeds.negative)
        return self._output(latents, output_type, return_dict, generator, dtype)

    def noised_image_latents(
        self, pixels: torch.Tensor, timestep: torch.Tensor, total: int, dtype: torch.dtype, generator: Generator
    ) -> torch.Tensor:
        latents = self.image_latents(pixels, total, dtype, generator)
        noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=dtype)
        noised: torch.Tensor = self.scheduler.add_noise(latents, noise, timestep)
        return noised


class StableDiffusionInpaintPipeline(_StableDiffusion):
    """Inpainting: repaint where ``mask_image`` is white.

    A 9-channel inpainting UNet sees the mask and the masked image's latents; a plain 4-channel
    UNet denoises everything and the known region is blended back after every step.
    """

    _scheduler_fixes = ("skip_prk_steps",)

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
    ) -> Any:
        """Repaint the masked part of ``image`` guided by ``prompt``."""
        if image is None or mask_image is None:
            raise ValueError(f"{type(self).__name__} needs image= and mask_image=")
        height, width = self.default_size(height, width)
        batch = self._prepare(
            prompt,
            prompt_embeds,
            num_images_per_prompt,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        channels = self.unet.config.in_channels
        latent_channels = self.vae.config.latent_channels
        if channels not in (4, 2 * latent_channels + 1):
            raise ValueError(
                f"{type(self).__name__}: the UNet takes {channels} input channels; inpainting needs 4 (blending) "
                f"or {2 * latent_channels + 1} (latents + mask + masked image latents)"
            )
        guidance = self.uses_guidance(guidance_scale)
        embeds = self.encode_prompt(
            prompt,
            num_images_per_prompt=num_images_per_prompt,
            guidance=guidance,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            clip_skip=clip_skip,
        )
        steps, count = set_schedule(
            self.scheduler, num_inference_steps, self.device, timesteps=timesteps, sigmas=sigmas
        )
        steps, count = strength_schedule(self.scheduler, steps, count, strength)
        if count < 1:
            raise ValueError(
                f"strength={strength} leaves no denoising steps out of {num_inference_steps}; raise either"
            )
        total = batch * num_images_per_prompt
        dtype = embeds.embeds.dtype
        full_strength = strength == 1.0
        pixels = preprocess_image(image, height, width, multiple=self.vae_scale_factor).to(torch.float32)
        blending = channels == 4
        shape = (total, latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

        image_latents = None
        if blending or (latents is None and not full_strength):
            image_latents = self.image_latents(pixels, total, dtype, generator)
        if latents is None:
            noise = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
            if full_strength:
                latents = noise * self.scheduler.init_noise_sigma
            else:
                assert image_latents is not None
                latents = self.scheduler.add_noise(image_latents, noise, steps[:1].repeat(total))
        else:
            noise = latents.to(self.device)
            latents = noise * self.scheduler.init_noise_sigma

        mask = preprocess_mask(mask_image, height, width, multiple=self.vae_scale_factor)
        masked = masked_image_latents if masked_image_latents is not None else pixels * (mask < 0.5)
        mask_latents, masked_latents = self.mask_latents(mask, masked, total, height, width, dtype, generator, guidance)

        run = Denoise(
            timesteps=steps,
            embeds=embeds.for_unet(),
            guidance_scale=guidance_scale,
            guidance=guidance,
            eta=eta,
            generator=generator,
            timestep_cond=self.guidance_embedding(guidance_scale, total, latents.dtype),
            cross_attention_kwargs=cross_attention_kwargs,
            callback=callback_on_step_end,
            callback_names=callback_on_step_end_tensor_inputs,
        )
        if blending:
            assert image_latents is not None
            keep = mask_latents.chunk(2)[0] if guidance else mask_latents
            known = image_latents

            def blend(i: int, current: torch.Tensor) -> torch.Tensor:
                proper = known
                if i < len(steps) - 1:
                    proper = self.scheduler.add_noise(known, noise, steps[i + 1 : i + 2])
                return (1 - keep) * proper + keep * current

            run.blend = blend
        else:
            run.extra_channels = torch.cat([mask_latents, masked_latents], dim=1)
        latents = self.denoise(latents, run, embeds.negative)
        return self._output(latents, output_type, return_dict, generator, dtype)

    def mask_latents(
        self,
        mask: torch.Tensor,
        masked_image: torch.Tensor,
        total: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        generator: Generator,
        guidance: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask at latent size and the masked image's latents, batched (and doubled when guiding)."""
        factor = self.vae_scale_factor
        mask = torch.nn.functional.interpolate(mask, size=(height // factor, width // factor))
        mask = mask.to(device=self.device, dtype=dtype)
        masked_image = masked_image.to(device=self.device, dtype=dtype)
        if masked_image.shape[1] == self.vae.config.latent_channels:
            latents = masked_image
        else:
            latents = encode_latents(self.vae, masked_image, generator) * self.vae.config.scaling_factor
        for name, t in (("masks", mask), ("images", latents)):
            if total % t.shape[0]:
                raise ValueError(f"cannot spread {t.shape[0]} {name} over {total} outputs; pass 1 or {total}")
        mask = mask.repeat(total // mask.shape[0], 1, 1, 1)
        latents = latents.repeat(total // latents.shape[0], 1, 1, 1)
        if guidance:
            mask, latents = torch.cat([mask] * 2), torch.cat([latents] * 2)
        return mask, latents.to(device=self.device, dtype=dtype)
