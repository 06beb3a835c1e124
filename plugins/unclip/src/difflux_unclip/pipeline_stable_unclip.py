"""Stable unCLIP: Stable Diffusion 2.1 conditioned on a (noised) CLIP image embedding.

The UNet's ``class_labels`` carry the CLIP image embedding, normalised, noised to ``noise_level`` by
``image_noising_scheduler``, un-normalised and concatenated with the noise level's sinusoidal
embedding (Ramesh et al. 2022's noise augmentation; Stability AI's Stable unCLIP). The text-to-image
pipeline gets the embedding from the unCLIP prior (:mod:`difflux_kandinsky.prior`), the image pipeline
from a CLIP image encoder; the rest is the Stable Diffusion base.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import PIL.Image
import torch
from difflux.modeling import ModelMixin
from difflux.pipeline_utils import LegacyCallback, check_finite
from difflux.protocols import Scheduler
from difflux.torch_utils import randn_tensor
from difflux_kandinsky.prior import denoise_prior, encode_prior_prompt
from difflux_models.layers import get_timestep_embedding
from difflux_stable_diffusion._base import Denoise, ImagesOnly, StableDiffusionBase
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.prompts import Prompt, PromptEncoderMixin, prompt_list
from torch import nn

__all__ = ["StableUnCLIPImageNormalizer", "StableUnCLIPImg2ImgPipeline", "StableUnCLIPPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None


class StableUnCLIPImageNormalizer(ModelMixin):
    """The mean ``(1, D)`` and standard deviation ``(1, D)`` of the CLIP image embeddings Stable unCLIP was
    trained on; config key ``embedding_dim`` and parameters ``mean`` / ``std`` as Diffusers'."""

    def __init__(self, embedding_dim: int = 768) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, embedding_dim))
        self.std = nn.Parameter(torch.ones(1, embedding_dim))

    def scale(self, embeds: torch.Tensor) -> torch.Tensor:
        """``(embeds - mean) / std``."""
        return (embeds - self.mean.to(embeds)) * 1.0 / self.std.to(embeds)

    def unscale(self, embeds: torch.Tensor) -> torch.Tensor:
        """``embeds * std + mean``."""
        return embeds * self.std.to(embeds) + self.mean.to(embeds)


class _StableUnCLIPBase(ImagesOnly, PromptEncoderMixin, StableDiffusionBase):
    """Shared steps: the noise-augmented image embedding as ``class_labels``, then the SD loop."""

    _optional_components: ClassVar[tuple[str, ...]] = ()
    image_normalizer: Any
    image_noising_scheduler: Any

    def uses_guidance(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def check_noise_level(self, noise_level: Any) -> int:
        """``noise_level`` is an int in ``[0, image_noising_scheduler.config.num_train_timesteps)``."""
        steps = int(self.image_noising_scheduler.config.num_train_timesteps)
        if (
            isinstance(noise_level, bool)
            or not isinstance(noise_level, numbers.Integral)
            or not 0 <= int(noise_level) < steps
        ):
            raise ValueError(
                f"{type(self).__name__}: noise_level must be an int in [0, {steps - 1}], got {noise_level!r}"
            )
        return int(noise_level)

    def noise_image_embeddings(
        self, image_embeds: torch.Tensor, noise_level: int, generator: Generator = None
    ) -> torch.Tensor:
        """``(N, D)`` image embeddings to the UNet's class labels ``(N, 2 D)``: noised to ``noise_level`` in the
        normaliser's units, then concatenated with the sinusoidal embedding of ``noise_level``."""
        noise = randn_tensor(
            image_embeds.shape, generator=generator, device=image_embeds.device, dtype=image_embeds.dtype
        )
        levels = torch.tensor([noise_level] * image_embeds.shape[0], device=image_embeds.device)
        scaled = self.image_normalizer.scale(image_embeds)
        noised = self.image_normalizer.unscale(self.image_noising_scheduler.add_noise(scaled, noise, levels))
        emb = get_timestep_embedding(levels, noised.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0)
        return torch.cat([noised, emb.to(noised.dtype)], dim=1)

    def run_decoder(
        self,
        inputs: dict[str, Any],
        batch: int,
        class_labels: torch.Tensor,
        generator: Generator,
    ) -> Any:
        """Encode the prompt and denoise with ``class_labels`` (``(N, 2D)``, zeros prepended when guiding)."""
        a = inputs
        height, width = self.default_size(a["height"], a["width"])
        opts = self.sampling(
            a["guidance_scale"],
            0.0,
            a["eta"],
            generator,
            a["cross_attention_kwargs"],
            legacy=a["callback"],
            legacy_steps=a["callback_steps"],
            clip_skip=a["clip_skip"],
        )
        embeds = self.encode_prompt(
            a["prompt"],
            num_images_per_prompt=a["num_images_per_prompt"],
            guidance=opts.guidance,
            negative_prompt=a["negative_prompt"],
            prompt_embeds=a["prompt_embeds"],
            negative_prompt_embeds=a["negative_prompt_embeds"],
            clip_skip=a["clip_skip"],
        )
        if opts.guidance:
            class_labels = torch.cat([torch.zeros_like(class_labels), class_labels])
        total = batch * a["num_images_per_prompt"]
        steps = self.schedule(a["num_inference_steps"])
        latents = self.prepare_latents(
            self.latent_shape(total, height, width), embeds.embeds.dtype, generator, a["latents"]
        )
        run = Denoise(steps, embeds.for_unet(), opts, class_labels=class_labels.to(embeds.embeds.dtype))
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, a["output_type"], a["return_dict"], generator)


class StableUnCLIPPipeline(_StableUnCLIPBase):
    """Stable unCLIP text-to-image: the unCLIP prior gives the image embedding, Stable Diffusion draws it.

    Components: ``prior_tokenizer``, ``prior_text_encoder`` (``CLIPTextModelWithProjection``), ``prior``
    (``PriorTransformer``), ``prior_scheduler``, ``image_normalizer`` (:class:`StableUnCLIPImageNormalizer`),
    ``image_noising_scheduler``, ``tokenizer``, ``text_encoder``, ``unet``, ``scheduler``, ``vae``.
    """

    model_cpu_offload_seq = "text_encoder->prior_text_encoder->unet->vae"

    prior: Any
    prior_tokenizer: Any
    prior_text_encoder: Any
    prior_scheduler: Any

    def __init__(
        self,
        prior_tokenizer: Any,
        prior_text_encoder: Any,
        prior: Any,
        prior_scheduler: Scheduler,
        image_normalizer: Any,
        image_noising_scheduler: Scheduler,
        tokenizer: Any,
        text_encoder: Any,
        unet: Any,
        scheduler: Scheduler,
        vae: Any,
    ) -> None:
        super().__init__()
        self.register_modules(
            prior_tokenizer=prior_tokenizer,
            prior_text_encoder=prior_text_encoder,
            prior=prior,
            prior_scheduler=prior_scheduler,
            image_normalizer=image_normalizer,
            image_noising_scheduler=image_noising_scheduler,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            unet=unet,
            scheduler=scheduler,
            vae=vae,
        )

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 10.0,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        noise_level: int = 0,
        prior_num_inference_steps: int = 25,
        prior_guidance_scale: float = 4.0,
        prior_latents: torch.Tensor | None = None,
        clip_skip: int | None = None,
    ) -> Any:
        """Images for ``prompt``.

        :param noise_level: how much noise the image embedding gets (a training timestep of
            ``image_noising_scheduler``, 0 = none); the UNet also sees the level.
        :param prior_num_inference_steps: the prior's steps; ``prior_guidance_scale`` its guidance;
            ``prior_latents`` ``(N, D)`` its starting noise.

        The other arguments are :class:`~difflux_stable_diffusion.StableDiffusionPipeline`'s. The prior reads
        ``prompt`` (not ``prompt_embeds``).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        name = type(self).__name__
        if prompt is None:
            raise ValueError(f"{name}: pass prompt (the prior reads the text; prompt_embeds alone cannot condition it)")
        batch = self.check_inputs(Inputs.of(locals()))
        noise_level = self.check_noise_level(noise_level)
        total = batch * num_images_per_prompt
        shape = (total, self.prior.config.embedding_dim)
        if prior_latents is not None and (
            not isinstance(prior_latents, torch.Tensor) or tuple(prior_latents.shape) != shape
        ):
            raise ValueError(f"{name}: prior_latents must be shaped {shape}")
        check_finite(prior_latents, "prior_latents", name)
        if isinstance(prior_guidance_scale, bool) or not isinstance(prior_guidance_scale, numbers.Real):
            raise TypeError(f"{name}: prior_guidance_scale must be a number, got {prior_guidance_scale!r}")
        prior_guided = prior_guidance_scale > 1.0
        text = encode_prior_prompt(
            self,
            list(prompt_list(prompt) or []),
            num_images_per_prompt,
            prior_guided,
            None,
            tokenizer=self.prior_tokenizer,
            text_encoder=self.prior_text_encoder,
        )
        self._guidance_scale, self._interrupt = float(prior_guidance_scale), False
        self.prior_scheduler.set_timesteps(prior_num_inference_steps, device=self.device)
        if prior_latents is None:
            prior_latents = randn_tensor(shape, generator=generator, device=self.device, dtype=text.embeds.dtype)
        start = prior_latents.to(self.device) * self.prior_scheduler.init_noise_sigma
        image_embeds = denoise_prior(
            self, self.prior, self.prior_scheduler, start, self.prior_scheduler.timesteps, text, generator
        )
        class_labels = self.noise_image_embeddings(image_embeds, noise_level, generator)
        return self.run_decoder(dict(locals()), batch, class_labels, generator)


class StableUnCLIPImg2ImgPipeline(_StableUnCLIPBase):
    """Stable unCLIP image variations: the CLIP image embedding of ``image`` (noised) steers Stable Diffusion.

    Components: ``feature_extractor`` (``CLIPImageProcessor``), ``image_encoder``
    (``CLIPVisionModelWithProjection``), ``image_normalizer``, ``image_noising_scheduler``, ``tokenizer``,
    ``text_encoder``, ``unet``, ``scheduler``, ``vae``.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"

    feature_extractor: Any

    def __init__(
        self,
        feature_extractor: Any,
        image_encoder: Any,
        image_normalizer: Any,
        image_noising_scheduler: Scheduler,
        tokenizer: Any,
        text_encoder: Any,
        unet: Any,
        scheduler: Scheduler,
        vae: Any,
    ) -> None:
        super().__init__()
        self.register_modules(
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            image_normalizer=image_normalizer,
            image_noising_scheduler=image_noising_scheduler,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            unet=unet,
            scheduler=scheduler,
            vae=vae,
        )

    def __call__(
        self,
        image: PIL.Image.Image | Sequence[PIL.Image.Image] | torch.Tensor | None = None,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 10.0,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        noise_level: int = 0,
        image_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
    ) -> Any:
        """Variations of ``image``, optionally steered by ``prompt`` (default ``""`` per image).

        :param image: PIL image(s) or ``(B, 3, S, S)`` pixels prepared for the image encoder; or pass
            ``image_embeds`` ``(B, D)``.
        :param noise_level: noise added to the image embedding (a training timestep of
            ``image_noising_scheduler``; 0 = none).

        The other arguments are :class:`~difflux_stable_diffusion.StableDiffusionPipeline`'s. This is Stable
        unCLIP's image-conditioned generation from noise (Diffusers' name), not a noised-image start.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        name = type(self).__name__
        if (image is None) == (image_embeds is None):
            raise ValueError(f"{name}: pass image or image_embeds, exactly one")
        if image is not None and not (
            isinstance(image, (PIL.Image.Image, torch.Tensor))
            or (isinstance(image, (list, tuple)) and image and all(isinstance(i, PIL.Image.Image) for i in image))
        ):
            raise TypeError(f"{name}: image must be PIL image(s) or a (batch, 3, H, W) tensor, got {type(image)}")
        if image_embeds is not None and (not isinstance(image_embeds, torch.Tensor) or image_embeds.ndim != 2):
            raise ValueError(f"{name}: image_embeds must be a (batch, features) tensor")
        check_finite(image_embeds, "image_embeds", name)
        if prompt is None and prompt_embeds is None:
            prompt = [""] * len(image) if isinstance(image, (list, tuple)) else ""
        batch = self.check_inputs(Inputs.of(locals(), image=None))
        noise_level = self.check_noise_level(noise_level)
        if image_embeds is None:
            pixels = (
                image
                if isinstance(image, torch.Tensor)
                else self.feature_extractor(images=image, return_tensors="pt").pixel_values
            )
            dtype = next(self.image_encoder.parameters()).dtype
            image_embeds = self.image_encoder(pixels.to(self.device, dtype)).image_embeds
        class_labels = self.noise_image_embeddings(image_embeds.to(self.device), noise_level, generator)
        repeat = batch * num_images_per_prompt if isinstance(image, PIL.Image.Image) else num_images_per_prompt
        class_labels = class_labels.repeat_interleave(repeat, dim=0)
        return self.run_decoder(dict(locals()), batch, class_labels, generator)
