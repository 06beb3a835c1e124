"""Stable Diffusion upscalers: the x4 pixel-space upscaler and the x2 latent upscaler.

The x4 upscaler (``StableDiffusionUpscalePipeline``) denoises latents at the low-resolution
image's size with the noised image concatenated to them (a 7-channel UNet) and the noise level
as class label; its VAE decodes 4x larger. The x2 latent upscaler
(``StableDiffusionLatentUpscalePipeline``) takes Stable Diffusion latents (or an image) and
denoises twice their size with a k-diffusion preconditioned UNet under an Euler scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler
from difflux.torch_utils import randn_tensor

from ._base import Denoise, ImagesOnly, StableDiffusionBase, fit, say_once, spread
from .checks import Inputs
from .images import ImageInput, preprocess_image
from .pipeline_stable_diffusion import Generator, _StableDiffusion
from .prompts import Prompt, PromptEmbeds, encode_prompt_pooled

__all__ = ["StableDiffusionLatentUpscalePipeline", "StableDiffusionUpscalePipeline"]

#: the VAE scaling factor of the x4 upscaler (Diffusers corrects other values to it)
X4_SCALING_FACTOR = 0.08333


def _check_unet_channels(unet: Any, latents: int, image: int) -> None:
    if latents + image != unet.config.in_channels:
        raise ValueError(
            f"the UNet takes {unet.config.in_channels} input channels, but latents ({latents}) and the image "
            f"({image}) give {latents + image}; check unet/config.json or the image"
        )


class StableDiffusionUpscalePipeline(_StableDiffusion):
    """Text-guided x4 upscaling: ``image`` noised to ``noise_level`` by ``low_res_scheduler`` conditions the UNet."""

    _optional_components = ("watermarker", "safety_checker", "feature_extractor")
    _upcast_vae = True
    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        low_res_scheduler: Scheduler,
        scheduler: Scheduler,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        watermarker: Any = None,
        max_noise_level: int = 350,
    ) -> None:
        StableDiffusionBase.__init__(self)
        config = getattr(vae, "config", None)
        if config is not None and config.get("scaling_factor") != X4_SCALING_FACTOR:
            say_once(
                f"{type(self).__name__}:scaling",
                logging.WARNING,
                "%s: the VAE's scaling_factor is %r, not the x4 upscaler's %r; using %r (fix vae/config.json)",
                type(self).__name__,
                config.get("scaling_factor"),
                X4_SCALING_FACTOR,
                X4_SCALING_FACTOR,
            )
            vae.register_to_config(scaling_factor=X4_SCALING_FACTOR)
        if safety_checker is not None and feature_extractor is None:
            raise ValueError(f"{type(self).__name__}: a safety_checker needs a feature_extractor to prepare its input")
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            low_res_scheduler=low_res_scheduler,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            watermarker=watermarker,
        )

    low_res_scheduler: Any
    watermarker: Any

    def noised_image(
        self, image: Any, noise_level: int, total: int, guidance: bool, dtype: torch.dtype, generator: Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image noised to noise_level for total outputs, doubled when guiding; the noise levels as class labels)``.

        With a list of generators each output's image gets its own noise from its own generator.
        """
        if noise_level > self.config["max_noise_level"]:
            raise ValueError(f"noise_level must be at most max_noise_level={self.config['max_noise_level']}")
        pixels = preprocess_image(image, multiple=self.vae_scale_factor, resample="bicubic")
        pixels = pixels.to(device=self.device, dtype=dtype)
        if isinstance(generator, Sequence) and pixels.shape[0] < total:
            pixels = spread(pixels, total)
        level = torch.tensor([noise_level], dtype=torch.long, device=self.device)
        noise = randn_tensor(pixels.shape, generator=generator, device=self.device, dtype=dtype)
        noised = spread(self.low_res_scheduler.add_noise(pixels, noise, level), total)
        noised = torch.cat([noised] * 2) if guidance else noised
        return noised, level.repeat(noised.shape[0])

    def wrap_output(self, images: Any, flags: list[bool] | None, return_dict: bool) -> Any:
        if self.watermarker is not None and isinstance(images, list):
            images = self.watermarker.apply_watermark(images)
        return super().wrap_output(images, flags, return_dict)

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        num_inference_steps: int = 75,
        guidance_scale: float = 9.0,
        noise_level: int = 20,
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
        """Upscale ``image`` four times, guided by ``prompt``."""
        total = self.check_inputs(Inputs.of(locals(), needs_image=True), image_minimum=1) * num_images_per_prompt
        opts = self.sampling_of(locals())
        embeds = self.prompt_of(locals(), opts)
        dtype = embeds.embeds.dtype
        steps = self.schedule(num_inference_steps)
        noised, levels = self.noised_image(image, noise_level, total, opts.guidance, dtype, generator)
        channels = self.vae.config.latent_channels
        _check_unet_channels(self.unet, channels, noised.shape[1])
        shape = (total, channels, *noised.shape[-2:])
        latents = self.prepare_latents(shape, dtype, generator, latents)
        run = self.run(steps, embeds, opts, total)
        run.extra["image"], run.channels, run.class_labels = noised, ("image",), levels
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)


class StableDiffusionLatentUpscalePipeline(ImagesOnly, StableDiffusionBase):
    """Text-guided x2 upscaling of Stable Diffusion latents (or images, encoded first)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Scheduler) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)

    def uses_guidance(self, guidance_scale: float) -> bool:
        """Guidance runs when ``guidance_scale > 1`` (the UNet's ``timestep_cond`` is the noise level)."""
        return guidance_scale > 1

    def encode_prompt(self, prompt: Prompt | None, *, guidance: bool = False, **embeds: Any) -> PromptEmbeds:
        """Last hidden states and pooled outputs; see :func:`~.prompts.encode_prompt_pooled`."""
        return encode_prompt_pooled(
            self.text_encoder, self.tokenizer, prompt, device=self.device, guidance=guidance, **embeds
        )

    def conditioning(self, embeds: PromptEmbeds) -> torch.Tensor:
        """The UNet's ``timestep_cond``: the embedding of noise level 0 (64 ones, 64 zeros) and the pooled text."""
        pooled = embeds.pooled_for_unet()
        pooled = pooled.to(self.device)
        level = torch.ones(pooled.shape[0], 64, dtype=pooled.dtype, device=self.device)
        return torch.cat([level, torch.zeros_like(level), pooled], dim=1)

    def predictor(self, image_cond: torch.Tensor, timestep_cond: torch.Tensor) -> Any:
        """The preconditioned denoiser (Karras et al. 2022, table 1) around the upscaler UNet.

        The UNet sees the input scaled by ``1 / sqrt(sigma^2 + 1)`` next to the image, and
        ``log(sigma) / 4`` as its timestep; its output (less the last channel) is mixed with the
        input into the denoised sample the scheduler expects.
        """
        scheduler = self.scheduler

        def predict(i: int, t: torch.Tensor, model_input: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            sigma = scheduler.sigmas[i]
            batch = model_input.shape[0]
            scaled = torch.cat([scheduler.scale_model_input(model_input, t), image_cond[-batch:]], dim=1)
            out = self.unet(
                scaled, torch.log(sigma) * 0.25, encoder_hidden_states=embeds, timestep_cond=fit(timestep_cond, batch),
                return_dict=False,
            )[0][:, :-1]
            return model_input / (sigma**2 + 1) + scheduler.scale_model_input(sigma, t) * out  # type: ignore[no-any-return]

        return predict

    def image_condition(
        self, image: Any, total: int, copies: int, dtype: torch.dtype, generator: Generator
    ) -> torch.Tensor:
        """Latents of ``image`` (encoded when pixels; per output with a list of generators), doubled in size
        (nearest), ``copies`` times."""
        image = preprocess_image(image, multiple=self.vae_scale_factor, latent_channels=4, resample="bicubic")
        image = image.to(device=self.device, dtype=dtype)
        if isinstance(generator, Sequence) and image.shape[0] < total:
            image = spread(image, total)
        if image.shape[1] == 3:
            image = self.encode_vae(image, generator)
        image = torch.cat([image] * copies)
        return torch.nn.functional.interpolate(image, scale_factor=2, mode="nearest").to(dtype)

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        num_inference_steps: int = 75,
        guidance_scale: float = 9.0,
        negative_prompt: Prompt | None = None,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Upscale ``image`` (latents or pixels) twice, guided by ``prompt``."""
        batch = self.check_inputs(Inputs.of(locals(), needs_image=True), image_minimum=1)
        opts = self.sampling(
            guidance_scale, callback=callback_on_step_end, callback_names=callback_on_step_end_tensor_inputs,
            legacy=callback, legacy_steps=callback_steps,
        )
        text = [""] * batch if guidance_scale == 0 and prompt_embeds is None else prompt
        embeds = self.encode_prompt(
            text, guidance=opts.guidance, negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds, negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        dtype = embeds.embeds.dtype
        image_cond = self.image_condition(image, batch, 2 if opts.guidance else 1, dtype, generator)
        steps = self.schedule(num_inference_steps)
        channels = self.vae.config.latent_channels
        _check_unet_channels(self.unet, channels, image_cond.shape[1])
        latents = self.prepare_latents((batch, channels, *image_cond.shape[-2:]), dtype, generator, latents)
        run = Denoise(steps, embeds.for_unet(), opts)
        run.predict = self.predictor(image_cond, self.conditioning(embeds))
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)
