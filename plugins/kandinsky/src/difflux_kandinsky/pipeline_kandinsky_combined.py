"""Kandinsky 2.1 in one call: the prior and a 2.1 decoder, sharing the components of one folder."""

from __future__ import annotations

from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion.images import ImageInput
from difflux_stable_diffusion.prompts import prompt_list

from .pipeline_kandinsky import (
    KandinskyImg2ImgPipeline,
    KandinskyInpaintPipeline,
    KandinskyPipeline,
    KandinskyPriorPipeline,
)
from .pipeline_kandinsky2_2_combined import _Combined, _per_embedding
from .pipeline_kandinsky2_2_prior import Generator, Prompt

__all__ = ["KandinskyCombinedPipeline", "KandinskyImg2ImgCombinedPipeline", "KandinskyInpaintCombinedPipeline"]


class _Combined21(_Combined):
    """The Kandinsky 2.1 prior (``prior_*``) and a 2.1 decoder (``text_encoder``, ``tokenizer``, ``unet``,
    ``scheduler``, ``movq``) in one pipeline; ``prior_pipe`` / ``decoder_pipe`` share the component objects."""

    model_cpu_offload_seq = "text_encoder->unet->movq->prior_prior->prior_image_encoder->prior_text_encoder"
    _prior_class = KandinskyPriorPipeline

    def __init__(  # type: ignore[no-untyped-def]
        self,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Scheduler,
        movq: Any,
        prior_prior: Any,
        prior_image_encoder: Any,
        prior_text_encoder: Any,
        prior_tokenizer: Any,
        prior_scheduler: Scheduler,
        prior_image_processor: Any,
    ):
        super(_Combined, self).__init__()
        self.register_modules(
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            movq=movq,
            prior_prior=prior_prior,
            prior_image_encoder=prior_image_encoder,
            prior_text_encoder=prior_text_encoder,
            prior_tokenizer=prior_tokenizer,
            prior_scheduler=prior_scheduler,
            prior_image_processor=prior_image_processor,
        )
        self._wire(
            prior_prior,
            prior_image_encoder,
            prior_text_encoder,
            prior_tokenizer,
            prior_scheduler,
            prior_image_processor,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            movq=movq,
        )

    def _run(
        self,
        prompt: Prompt,
        negative_prompt: Prompt | None,
        num_images_per_prompt: int,
        prior_num_inference_steps: int,
        prior_guidance_scale: float,
        generator: Generator,
        latents: torch.Tensor | None,
        **decoder_args: Any,
    ) -> Any:
        """The prior, then the decoder with each prompt repeated for its images."""
        if not isinstance(prompt, (str, list, tuple)):
            raise TypeError(f"{type(self).__name__}: prompt must be a string or a list of strings, got {prompt!r}")
        embeds, negative = self._prior(
            prompt,
            negative_prompt,
            num_images_per_prompt,
            prior_num_inference_steps,
            prior_guidance_scale,
            generator,
            latents,
            None,
            ("latents",),
        )
        prompts = [p for p in (prompt_list(prompt) or []) for _ in range(num_images_per_prompt)]
        return self.decoder_pipe(
            prompt=prompts, image_embeds=embeds, negative_image_embeds=negative, generator=generator, **decoder_args
        )


class KandinskyCombinedPipeline(_Combined21):
    """Kandinsky 2.1 text-to-image: :class:`KandinskyPriorPipeline` then :class:`KandinskyPipeline`."""

    _decoder_class = KandinskyPipeline

    def __call__(
        self,
        prompt: Prompt,
        negative_prompt: Prompt | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        return_dict: bool = True,
    ) -> Any:
        """Images for ``prompt``; ``negative_prompt`` steers the prior (as in Diffusers), ``latents`` is the
        prior's starting noise, ``prior_*`` are the prior's options and the rest the decoder's
        (:class:`KandinskyPipeline`).

        :raises TypeError | ValueError: for bad input, before the first model runs.
        """
        self.decoder_pipe.check_run(1, height, width, num_inference_steps, 1, None, None, output_type, ("latents",))
        return self._run(
            prompt,
            negative_prompt,
            num_images_per_prompt,
            prior_num_inference_steps,
            prior_guidance_scale,
            generator,
            latents,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            output_type=output_type,
            callback=callback,
            callback_steps=callback_steps,
            return_dict=return_dict,
        )


class KandinskyImg2ImgCombinedPipeline(_Combined21):
    """Kandinsky 2.1 image-to-image: :class:`KandinskyPriorPipeline` then :class:`KandinskyImg2ImgPipeline`."""

    _decoder_class = KandinskyImg2ImgPipeline

    def __call__(
        self,
        prompt: Prompt,
        image: ImageInput,
        negative_prompt: Prompt | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        strength: float = 0.3,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        return_dict: bool = True,
    ) -> Any:
        """``image`` transformed towards ``prompt``: :class:`KandinskyCombinedPipeline`'s arguments plus ``image``
        and ``strength`` (:class:`KandinskyImg2ImgPipeline`).

        :raises TypeError | ValueError: for bad input, before the first model runs.
        """
        decoder = self.decoder_pipe
        decoder.check_image(image)
        decoder.check_run(
            1, height, width, num_inference_steps, 1, None, None, output_type, ("latents",), strength=strength
        )
        count = len(prompt_list(prompt) or []) * num_images_per_prompt
        return self._run(
            prompt,
            negative_prompt,
            num_images_per_prompt,
            prior_num_inference_steps,
            prior_guidance_scale,
            generator,
            latents,
            image=_per_embedding(image, count),
            strength=strength,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            output_type=output_type,
            callback=callback,
            callback_steps=callback_steps,
            return_dict=return_dict,
        )


class KandinskyInpaintCombinedPipeline(_Combined21):
    """Kandinsky 2.1 inpainting: :class:`KandinskyPriorPipeline` then :class:`KandinskyInpaintPipeline`."""

    _decoder_class = KandinskyInpaintPipeline

    def __call__(
        self,
        prompt: Prompt,
        image: ImageInput,
        mask_image: ImageInput,
        negative_prompt: Prompt | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        return_dict: bool = True,
    ) -> Any:
        """Inpaint ``image`` where ``mask_image`` is white, towards ``prompt``: :class:`KandinskyCombinedPipeline`'s
        arguments plus ``image`` and ``mask_image`` (:class:`KandinskyInpaintPipeline`).

        :raises TypeError | ValueError: for bad input, before the first model runs.
        """
        decoder = self.decoder_pipe
        decoder.check_image(image)
        decoder.check_image(mask_image, "mask_image")
        decoder.check_run(1, height, width, num_inference_steps, 1, None, None, output_type, ("latents",))
        count = len(prompt_list(prompt) or []) * num_images_per_prompt
        return self._run(
            prompt,
            negative_prompt,
            num_images_per_prompt,
            prior_num_inference_steps,
            prior_guidance_scale,
            generator,
            latents,
            image=_per_embedding(image, count),
            mask_image=_per_embedding(mask_image, count),
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            output_type=output_type,
            callback=callback,
            callback_steps=callback_steps,
            return_dict=return_dict,
        )
