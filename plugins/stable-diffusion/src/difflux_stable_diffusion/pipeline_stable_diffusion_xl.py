"""Stable Diffusion XL: text-to-image, image-to-image (and refiner), inpainting; SDXL Turbo runs through them too.

SDXL conditions the UNet on two text encoders, a pooled text embedding and "micro-conditioning"
time ids (original size, crop corner, target size, or an aesthetic score for the refiner).
A base model can stop early (``denoising_end``, ``output_type="latent"``) and hand its latents
to the refiner (``StableDiffusionXLImg2ImgPipeline(..., denoising_start=...)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import StepCallback, check_batch
from difflux.protocols import Scheduler
from difflux.torch_utils import randn_tensor

from ._base import Denoise, StableDiffusionBase
from ._common import StableDiffusionXLPipelineOutput, encode_latents, set_schedule, strength_schedule
from .images import ImageInput, preprocess_image, preprocess_mask
from .prompts import Prompt, PromptEmbeds, encode_prompt_sdxl, prompt_batch_size

__all__ = ["StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline", "StableDiffusionXLPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None
Size = tuple[int, int]


def _fraction(value: float | None, name: str) -> float | None:
    """``value`` when it is a fraction strictly between 0 and 1; ``None`` otherwise (as Diffusers ignores it)."""
    if value is None:
        return None
    if not isinstance(value, float) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a float strictly between 0 and 1, got {value!r}")
    return value


def cut_at_denoising_end(scheduler: Scheduler, timesteps: torch.Tensor, denoising_end: float | None) -> torch.Tensor:
    """The leading part of the schedule a base model runs before handing off at ``denoising_end``."""
    if denoising_end is None:
        return timesteps
    total = scheduler.config["num_train_timesteps"]
    cutoff = round(total - denoising_end * total)
    return timesteps[: int((timesteps >= cutoff).sum().item())]


class _StableDiffusionXL(StableDiffusionBase):
    """Components, prompt encoding, micro-conditioning and decoding of the SDXL pipelines."""

    _optional_components = (
        "tokenizer",
        "tokenizer_2",
        "text_encoder",
        "text_encoder_2",
        "image_encoder",
        "feature_extractor",
    )

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        unet: Any,
        scheduler: Scheduler,
        image_encoder: Any = None,
        feature_extractor: Any = None,
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )

    # -- prompts and micro-conditioning ------------------------------------------------------

    def encode_prompt(
        self, prompt: Prompt | None, *, guidance: bool, num_images_per_prompt: int = 1, **kw: Any
    ) -> PromptEmbeds:
        """Embeddings from both text encoders (or the one a refiner has); see :func:`~.prompts.encode_prompt_sdxl`."""
        encoders = [
            (tok, enc)
            for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2))
            if tok is not None and enc is not None
        ]
        if not encoders and kw.get("prompt_embeds") is None:
            raise ValueError(f"{type(self).__name__} has no text encoder; pass prompt_embeds and pooled_prompt_embeds")
        dtype = self.text_encoder_2.dtype if self.text_encoder_2 is not None else self.unet.dtype
        return encode_prompt_sdxl(
            encoders,
            prompt,
            device=self.device,
            dtype=dtype,
            guidance=guidance,
            num_images_per_prompt=num_images_per_prompt,
            zeros_for_empty_negative=bool(self.config.get("force_zeros_for_empty_prompt", True)),
            **kw,
        )

    def _projection_dim(self, pooled: torch.Tensor) -> int:
        if self.text_encoder_2 is not None:
            return int(self.text_encoder_2.config.projection_dim)
        return int(pooled.shape[-1])

    def time_ids(self, values: Sequence[float], projection_dim: int, dtype: torch.dtype) -> torch.Tensor:
        """Micro-conditioning as a ``(1, n)`` tensor, checked against the UNet's added-embedding width."""
        ids = list(values)
        expected = self.unet.add_embedding.linear_1.in_features
        given = self.unet.config.addition_time_embed_dim * len(ids) + projection_dim
        if given != expected:
            hint = ""
            step = self.unet.config.addition_time_embed_dim
            if expected - given == step:
                hint = "; this UNet wants an aesthetic score: set requires_aesthetics_score=True"
            elif given - expected == step:
                hint = "; this UNet wants a target size, not an aesthetic score: set requires_aesthetics_score=False"
            raise ValueError(f"the UNet's added embedding takes {expected} features but {given} were made{hint}")
        return torch.tensor([ids], dtype=dtype)

    def _conditioning(
        self, embeds: PromptEmbeds, time_ids: torch.Tensor, negative_time_ids: torch.Tensor, total: int
    ) -> dict[str, torch.Tensor]:
        pooled = embeds.pooled_for_unet().to(self.device)
        ids = time_ids.repeat(total, 1)
        if embeds.negative is not None:
            ids = torch.cat([negative_time_ids.repeat(total, 1), ids])
        return {"text_embeds": pooled, "time_ids": ids.to(self.device)}

    # -- latents -----------------------------------------------------------------------------

    def _latent_stats(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        mean, std = self.vae.config.get("latents_mean"), self.vae.config.get("latents_std")
        if mean is None or std is None:
            return None
        shape = (1, len(mean), 1, 1)
        return (
            torch.tensor(mean).view(shape).to(self.device, dtype),
            torch.tensor(std).view(shape).to(self.device, dtype),
        )

    def encode_image(self, pixels: torch.Tensor, total: int, dtype: torch.dtype, generator: Generator) -> torch.Tensor:
        """Scaled latents of ``pixels`` (or the latents given), one per output image."""
        pixels = pixels.to(device=self.device, dtype=dtype)
        if pixels.shape[1] == self.vae.config.latent_channels:
            latents = pixels
        else:
            upcast = bool(self.vae.config.get("force_upcast", False)) and self.vae.dtype != torch.float32
            vae_dtype = self.vae.dtype
            if upcast:
                pixels = pixels.float()
                self.vae.to(dtype=torch.float32)
            if isinstance(generator, Sequence) and pixels.shape[0] < total:
                if total % pixels.shape[0]:
                    raise ValueError(f"cannot spread {pixels.shape[0]} images over {total} outputs")
                pixels = pixels.repeat(total // pixels.shape[0], 1, 1, 1)
            latents = encode_latents(self.vae, pixels, generator)
            if upcast:
                self.vae.to(dtype=vae_dtype)
            latents = latents.to(dtype)
            stats = self._latent_stats(dtype)
            if stats is not None:
                latents = (latents - stats[0]) * self.vae.config.scaling_factor / stats[1]
            else:
                latents = latents * self.vae.config.scaling_factor
        if total % latents.shape[0]:
            raise ValueError(f"cannot spread {latents.shape[0]} images over {total} outputs; pass 1 or {total} images")
        return latents.repeat(total // latents.shape[0], 1, 1, 1)

    def decode(self, latents: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """Latents to images; a float16 VAE with ``force_upcast`` decodes in float32."""
        upcast = self.vae.dtype == torch.float16 and bool(self.vae.config.get("force_upcast", False))
        if upcast:
            self.vae.to(dtype=torch.float32)
        stats = self._latent_stats(latents.dtype)
        if stats is not None:
            z = latents * stats[1] / self.vae.config.scaling_factor + stats[0]
        else:
            z = latents / self.vae.config.scaling_factor
        image: torch.Tensor = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]
        if upcast:
            self.vae.to(dtype=torch.float16)
        return image

    def _output(self, latents: torch.Tensor, output_type: str, return_dict: bool) -> Any:
        images = latents if output_type == "latent" else self.finish(self.decode(latents), output_type)
        return StableDiffusionXLPipelineOutput(images=images) if return_dict else (images,)

    def _check(
        self,
        prompt: Prompt | None,
        prompt_embeds: torch.Tensor | None,
        num_images_per_prompt: int,
        generator: Generator,
        callback: StepCallback | None,
        names: Sequence[str],
    ) -> int:
        batch = prompt_batch_size(prompt, prompt_embeds)
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        check_batch(batch * num_images_per_prompt, generator)
        self.check_callback(callback, names)
        return batch


class StableDiffusionXLPipeline(_StableDiffusionXL):
    """Text-to-image with SDXL (and SDXL Turbo: ``guidance_scale=0.0``, 1-4 steps)."""

    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds")

    def __call__(
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt`` (``prompt_2`` for the second text encoder)."""
        height, width = self.default_size(height, width)
        batch = self._check(
            prompt,
            prompt_embeds,
            num_images_per_prompt,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        denoising_end = _fraction(denoising_end, "denoising_end")
        guidance = self.uses_guidance(guidance_scale)
        embeds = self.encode_prompt(
            prompt,
            guidance=guidance,
            num_images_per_prompt=num_images_per_prompt,
            prompt_2=prompt_2,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            clip_skip=clip_skip,
        )
        steps, _ = set_schedule(self.scheduler, num_inference_steps, self.device, timesteps=timesteps, sigmas=sigmas)
        total = batch * num_images_per_prompt
        dtype = embeds.embeds.dtype
        shape = (total, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
        latents = latents.to(self.device) * self.scheduler.init_noise_sigma

        assert embeds.pooled is not None
        proj = self._projection_dim(embeds.pooled)
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        ids = self.time_ids([*original_size, *crops_coords_top_left, *target_size], proj, dtype)
        neg_ids = ids
        if negative_original_size is not None and negative_target_size is not None:
            neg_ids = self.time_ids(
                [*negative_original_size, *negative_crops_coords_top_left, *negative_target_size], proj, dtype
            )
        steps = cut_at_denoising_end(self.scheduler, steps, denoising_end)
        self.scheduler.set_begin_index(0)
        run = Denoise(
            timesteps=steps,
            embeds=embeds.for_unet(),
            guidance_scale=guidance_scale,
            guidance=guidance,
            guidance_rescale=guidance_rescale,
            eta=eta,
            generator=generator,
            timestep_cond=self.guidance_embedding(guidance_scale, total, latents.dtype),
            added_cond_kwargs=self._conditioning(embeds, ids, neg_ids, total),
            cross_attention_kwargs=cross_attention_kwargs,
            callback=callback_on_step_end,
            callback_names=callback_on_step_end_tensor_inputs,
        )
        latents = self.denoise(latents, run, embeds.negative)
        return self._output(latents, output_type, return_dict)


class StableDiffusionXLImg2ImgPipeline(_StableDiffusionXL):
    """Image-to-image with SDXL; as the refiner, it takes over a base model's latents at ``denoising_start``."""

    _optional_components = (*_StableDiffusionXL._optional_components,)

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        unet: Any,
        scheduler: Scheduler,
        image_encoder: Any = None,
        feature_extractor: Any = None,
        requires_aesthetics_score: bool = False,
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        super().__init__(
            vae,
            text_encoder,
            text_encoder_2,
            tokenizer,
            tokenizer_2,
            unet,
            scheduler,
            image_encoder,
            feature_extractor,
            force_zeros_for_empty_prompt,
        )

    def micro_conditioning(
        self,
        proj: int,
        dtype: torch.dtype,
        original_size: Size,
        crops: Size,
        target_size: Size,
        aesthetic_score: float,
        negative_aesthetic_score: float,
        negative_original_size: Size,
        negative_crops: Size,
        negative_target_size: Size,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(time ids, negative time ids)``: sizes and crop, or sizes and aesthetic score for a refiner."""
        if self.config.get("requires_aesthetics_score", False):
            pos = [*original_size, *crops, aesthetic_score]
            neg = [*negative_original_size, *negative_crops, negative_aesthetic_score]
        else:
            pos = [*original_size, *crops, *target_size]
            neg = [*negative_original_size, *crops, *negative_target_size]
        return self.time_ids(pos, proj, dtype), self.time_ids(neg, proj, dtype)

    def __call__(
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        image: ImageInput | None = None,
        strength: float = 0.3,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Transform ``image`` (pixels, or a base model's latents when refining) guided by ``prompt``."""
        if image is None:
            raise ValueError(f"{type(self).__name__} needs image=")
        batch = self._check(
            prompt,
            prompt_embeds,
            num_images_per_prompt,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        denoising_start = _fraction(denoising_start, "denoising_start")
        denoising_end = _fraction(denoising_end, "denoising_end")
        if denoising_start is not None and denoising_end is not None and denoising_start >= denoising_end:
            raise ValueError(f"denoising_start={denoising_start} must be below denoising_end={denoising_end}")
        guidance = self.uses_guidance(guidance_scale)
        embeds = self.encode_prompt(
            prompt,
            guidance=guidance,
            num_images_per_prompt=num_images_per_prompt,
            prompt_2=prompt_2,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            clip_skip=clip_skip,
        )
        pixels = preprocess_image(
            image, multiple=self.vae_scale_factor, latent_channels=self.vae.config.latent_channels
        )
        steps, count = set_schedule(
            self.scheduler, num_inference_steps, self.device, timesteps=timesteps, sigmas=sigmas
        )
        steps, count = strength_schedule(self.scheduler, steps, count, strength, denoising_start=denoising_start)
        if count < 1:
            raise ValueError(
                f"strength={strength} leaves no denoising steps out of {num_inference_steps}; raise either"
            )
        total = batch * num_images_per_prompt
        dtype = embeds.embeds.dtype
        if latents is None:
            latents = self.encode_image(pixels, total, dtype, generator)
            if denoising_start is None:  # a refiner gets latents that are already noisy
                noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=dtype)
                latents = self.scheduler.add_noise(latents, noise, steps[:1].repeat(total))
        height, width = (s * self.vae_scale_factor for s in latents.shape[-2:])
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        assert embeds.pooled is not None
        ids, neg_ids = self.micro_conditioning(
            self._projection_dim(embeds.pooled),
            dtype,
            original_size,
            crops_coords_top_left,
            target_size,
            aesthetic_score,
            negative_aesthetic_score,
            negative_original_size or original_size,
            negative_crops_coords_top_left,
            negative_target_size or target_size,
        )
        steps = cut_at_denoising_end(self.scheduler, steps, denoising_end)
        run = Denoise(
            timesteps=steps,
            embeds=embeds.for_unet(),
            guidance_scale=guidance_scale,
            guidance=guidance,
            guidance_rescale=guidance_rescale,
            eta=eta,
            generator=generator,
            timestep_cond=self.guidance_embedding(guidance_scale, total, latents.dtype),
            added_cond_kwargs=self._conditioning(embeds, ids, neg_ids, total),
            cross_attention_kwargs=cross_attention_kwargs,
            callback=callback_on_step_end,
            callback_names=callback_on_step_end_tensor_inputs,
        )
        latents = self.denoise(latents, run, embeds.negative)
        return self._output(latents, output_type, return_dict)


class StableDiffusionXLInpaintPipeline(StableDiffusionXLImg2ImgPipeline):
    """Inpainting with SDXL: a 9-channel inpainting UNet, or a 4-channel UNet with the known region blended back."""

    def __call__(  # type: ignore[override]
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        masked_image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 0.9999,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Repaint where ``mask_image`` is white."""
        if image is None or mask_image is None:
            raise ValueError(f"{type(self).__name__} needs image= and mask_image=")
        height, width = self.default_size(height, width)
        batch = self._check(
            prompt,
            prompt_embeds,
            num_images_per_prompt,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        denoising_start = _fraction(denoising_start, "denoising_start")
        denoising_end = _fraction(denoising_end, "denoising_end")
        channels = self.unet.config.in_channels
        latent_channels = self.vae.config.latent_channels
        if channels not in (4, 2 * latent_channels + 1):
            raise ValueError(
                f"{type(self).__name__}: the UNet takes {channels} input channels; inpainting needs 4 or 9"
            )
        guidance = self.uses_guidance(guidance_scale)
        embeds = self.encode_prompt(
            prompt,
            guidance=guidance,
            num_images_per_prompt=num_images_per_prompt,
            prompt_2=prompt_2,
            negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            clip_skip=clip_skip,
        )
        steps, count = set_schedule(
            self.scheduler, num_inference_steps, self.device, timesteps=timesteps, sigmas=sigmas
        )
        steps, count = strength_schedule(self.scheduler, steps, count, strength, denoising_start=denoising_start)
        if count < 1:
            raise ValueError(
                f"strength={strength} leaves no denoising steps out of {num_inference_steps}; raise either"
            )
        total = batch * num_images_per_prompt
        dtype = embeds.embeds.dtype
        full_strength = strength == 1.0
        add_noise = denoising_start is None
        pixels = preprocess_image(image, height, width, multiple=self.vae_scale_factor).to(torch.float32)
        mask = preprocess_mask(mask_image, height, width, multiple=self.vae_scale_factor)
        masked = masked_image_latents if masked_image_latents is not None else pixels * (mask < 0.5)
        blending = channels == 4
        shape = (total, latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

        image_latents = None
        if blending or (latents is None and not full_strength):
            image_latents = self.encode_image(pixels, total, dtype, generator)
        if latents is None and add_noise:
            noise = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
            if full_strength:
                latents = noise * self.scheduler.init_noise_sigma
            else:
                assert image_latents is not None
                latents = self.scheduler.add_noise(image_latents, noise, steps[:1].repeat(total))
        elif latents is None:
            assert image_latents is not None
            noise = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
            latents = image_latents
        else:
            noise = latents.to(self.device)
            latents = noise * self.scheduler.init_noise_sigma

        factor = self.vae_scale_factor
        mask_l = torch.nn.functional.interpolate(mask, size=(height // factor, width // factor))
        mask_l = mask_l.to(device=self.device, dtype=dtype)
        mask_l = mask_l.repeat(total // mask_l.shape[0], 1, 1, 1)
        masked_l = None
        if not blending:
            masked_l = (
                masked.to(self.device, dtype)
                if masked.shape[1] == latent_channels
                else self.encode_image(masked, total, dtype, generator)
            )
            masked_l = masked_l.repeat(total // masked_l.shape[0], 1, 1, 1)
        if guidance:
            mask_l = torch.cat([mask_l] * 2)
            masked_l = torch.cat([masked_l] * 2) if masked_l is not None else None

        assert embeds.pooled is not None
        original_size = original_size or (height, width)
        target_size = target_size or (height, width)
        ids, neg_ids = self.micro_conditioning(
            self._projection_dim(embeds.pooled),
            dtype,
            original_size,
            crops_coords_top_left,
            target_size,
            aesthetic_score,
            negative_aesthetic_score,
            negative_original_size or original_size,
            negative_crops_coords_top_left,
            negative_target_size or target_size,
        )
        steps = cut_at_denoising_end(self.scheduler, steps, denoising_end)
        run = Denoise(
            timesteps=steps,
            embeds=embeds.for_unet(),
            guidance_scale=guidance_scale,
            guidance=guidance,
            guidance_rescale=guidance_rescale,
            eta=eta,
            generator=generator,
            timestep_cond=self.guidance_embedding(guidance_scale, total, latents.dtype),
            added_cond_kwargs=self._conditioning(embeds, ids, neg_ids, total),
            cross_attention_kwargs=cross_attention_kwargs,
            callback=callback_on_step_end,
            callback_names=callback_on_step_end_tensor_inputs,
        )
        if blending:
            assert image_latents is not None
            keep = mask_l.chunk(2)[0] if guidance else mask_l
            known = image_latents

            def blend(i: int, current: torch.Tensor) -> torch.Tensor:
                proper = known
                if i < len(steps) - 1:
                    proper = self.scheduler.add_noise(known, noise, steps[i + 1 : i + 2])
                return (1 - keep) * proper + keep * current

            run.blend = blend
        else:
            assert masked_l is not None
            run.extra_channels = torch.cat([mask_l, masked_l], dim=1)
        latents = self.denoise(latents, run, embeds.negative)
        return self._output(latents, output_type, return_dict)
