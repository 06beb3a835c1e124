"""Kandinsky 2.2 priors: a prompt (and optionally an image) to CLIP image embeddings for the decoders.

The prior is unCLIP's diffusion prior (Ramesh et al., *Hierarchical Text-Conditional Image Generation
with CLIP Latents*, 2022, arXiv:2204.06125, sec. 2.1): a ``PriorTransformer`` denoises a CLIP image
embedding conditioned on the CLIP text embedding, its token states and mask, under ``UnCLIPScheduler``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from difflux import BaseOutput, DiffusionPipeline
from difflux.pipeline_utils import (
    DenoisingState,
    StepCallback,
    check_batch,
    check_callback_inputs,
    check_finite,
    check_output_type,
    check_steps,
    cut_schedule,
)
from difflux.protocols import Scheduler
from difflux.torch_utils import randn_tensor
from difflux_stable_diffusion.prompts import prompt_list

from .prior import PriorText, denoise_prior, encode_prior_prompt

__all__ = ["KandinskyPriorPipelineOutput", "KandinskyV22PriorEmb2EmbPipeline", "KandinskyV22PriorPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None
Prompt = str | Sequence[str]
ImageCond = torch.Tensor | PIL.Image.Image | Sequence[torch.Tensor] | Sequence[PIL.Image.Image]


@dataclasses.dataclass
class KandinskyPriorPipelineOutput(BaseOutput):
    """``image_embeds`` ``(N, D)`` for the decoder, and ``negative_image_embeds`` ``(N, D)`` for its guidance
    (torch tensors, or numpy arrays with ``output_type="np"``)."""

    image_embeds: torch.Tensor | np.ndarray
    negative_image_embeds: torch.Tensor | np.ndarray


class _KandinskyPriorBase(DenoisingState, DiffusionPipeline):
    """Shared steps of the Kandinsky 2.2 priors (not registered).

    Components: ``prior`` (``PriorTransformer``), ``image_encoder`` (``CLIPVisionModelWithProjection``),
    ``text_encoder`` (``CLIPTextModelWithProjection``), ``tokenizer`` (``CLIPTokenizer``), ``scheduler``
    (``UnCLIPScheduler``), ``image_processor`` (``CLIPImageProcessor``).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->prior"
    _exclude_from_cpu_offload = ("prior",)
    _callback_tensor_inputs: ClassVar[tuple[str, ...]] = (
        "latents",
        "prompt_embeds",
        "text_encoder_hidden_states",
        "text_mask",
    )

    prior: Any
    image_encoder: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    image_processor: Any

    def __init__(
        self,
        prior: Any,
        image_encoder: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Scheduler,
        image_processor: Any,
    ) -> None:
        super().__init__()
        self.register_modules(
            prior=prior,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            image_encoder=image_encoder,
            image_processor=image_processor,
        )

    # -- checks ----------------------------------------------------------------------------

    def _check(
        self,
        prompt: Any,
        negative_prompt: Any,
        num_images_per_prompt: Any,
        num_inference_steps: Any,
        guidance_scale: Any,
        output_type: str,
        generator: Generator,
        callback_names: Sequence[str] = ("latents",),
    ) -> tuple[list[str], list[str] | None]:
        """The prompts and negative prompts as lists, every option checked before any model runs.

        :raises TypeError | ValueError: naming the argument.
        """
        name = type(self).__name__
        for label, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not isinstance(value, (str, list, tuple)):
                raise TypeError(f"{name}: {label} must be a string or a list of strings, got {type(value).__name__}")
        prompts = prompt_list(prompt)
        if prompts is None or not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"{name}: prompt must be a string or a non-empty list of strings, got {prompt!r}")
        negatives = prompt_list(negative_prompt)
        if negatives is not None:
            if not all(isinstance(p, str) for p in negatives):
                raise TypeError(f"{name}: negative_prompt must be a string or a list of strings")
            if len(negatives) != len(prompts):
                raise ValueError(
                    f"{name}: got {len(negatives)} negative prompts for {len(prompts)} prompts; pass one per prompt"
                )
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, numbers.Integral):
            raise TypeError(f"{name}: num_images_per_prompt must be an int, got {num_images_per_prompt!r}")
        if num_images_per_prompt < 1:
            raise ValueError(f"{name}: num_images_per_prompt={num_images_per_prompt} must be at least 1")
        check_steps(num_inference_steps, name)
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
            raise TypeError(f"{name}: guidance_scale must be a number, got {guidance_scale!r}")
        check_output_type(output_type, ("pt", "np"), name)
        check_callback_inputs(callback_names, self._callback_tensor_inputs, name)
        runs = len(prompts) * (2 if negatives is not None else 1)
        check_batch(runs * int(num_images_per_prompt), generator)
        return list(prompts), None if negatives is None else list(negatives)

    # -- conditioning ----------------------------------------------------------------------

    def encode_prompt(
        self, prompts: list[str], per_prompt: int, guidance: bool, negatives: list[str] | None
    ) -> PriorText:
        """The prior's CLIP text conditioning (:func:`~difflux_kandinsky.prior.encode_prior_prompt`)."""
        return encode_prior_prompt(self, prompts, per_prompt, guidance, negatives)

    def encode_image(self, image: ImageCond, per_image: int) -> torch.Tensor:
        """CLIP image embeddings ``(B * per_image, D)`` of images (PIL, or ``(B, 3, S, S)`` pixel tensors
        already processed for the image encoder)."""
        if isinstance(image, (list, tuple)) and image and isinstance(image[0], torch.Tensor):
            pixels = torch.cat(list(image))  # type: ignore[arg-type]
        elif isinstance(image, torch.Tensor):
            pixels = image
        else:
            pixels = self.image_processor(image, return_tensors="pt").pixel_values
        pixels = pixels.to(device=self.device, dtype=self.image_encoder.dtype)
        embeds: torch.Tensor = self.image_encoder(pixels).image_embeds
        return embeds.repeat_interleave(per_image, dim=0)

    def get_zero_embed(self, batch_size: int = 1, device: torch.device | None = None) -> torch.Tensor:
        """The image embedding of a black image, ``(batch_size, D)``: the negative without a negative prompt."""
        size = self.image_encoder.config.image_size
        zeros = torch.zeros(1, 3, size, size, device=device or self.device, dtype=self.image_encoder.dtype)
        embeds: torch.Tensor = self.image_encoder(zeros).image_embeds
        return embeds.repeat(batch_size, 1)

    # -- the loop --------------------------------------------------------------------------

    def denoise_prior(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        text: PriorText,
        generator: Generator,
        callback: StepCallback | None = None,
        callback_names: Sequence[str] = ("latents",),
    ) -> torch.Tensor:
        """The prior's loop (:func:`~difflux_kandinsky.prior.denoise_prior`) with this pipeline's models."""
        return denoise_prior(
            self, self.prior, self.scheduler, latents, timesteps, text, generator, callback, callback_names
        )

    def finish(
        self, embeds: torch.Tensor, negatives: list[str] | None, output_type: str, return_dict: bool
    ) -> KandinskyPriorPipelineOutput | tuple[Any, Any]:
        """Split the prompt and negative-prompt halves (or add the black-image negative) and convert."""
        if negatives is None:
            image_embeds, zero = embeds, self.get_zero_embed(embeds.shape[0], device=embeds.device)
        else:
            image_embeds, zero = embeds.chunk(2)
        if output_type == "np":
            image_embeds, zero = image_embeds.cpu().numpy(), zero.cpu().numpy()  # type: ignore[assignment]
        if not return_dict:
            return image_embeds, zero
        return KandinskyPriorPipelineOutput(image_embeds=image_embeds, negative_image_embeds=zero)

    def _prepare(
        self, prompt: Prompt, negative_prompt: Prompt | None, guidance_scale: float
    ) -> tuple[list[str], list[str] | None]:
        """Prompts as the prior runs them: with negative prompts, those run as prompts of their own."""
        prompts = list(prompt_list(prompt) or [])
        negatives = prompt_list(negative_prompt)
        self._guidance_scale = float(guidance_scale)
        self._interrupt = False
        if negatives is None:
            return prompts, None
        return prompts + list(negatives), 2 * list(negatives)


class KandinskyV22PriorPipeline(_KandinskyPriorBase):
    """Kandinsky 2.2 prior: prompts to the CLIP image embeddings the decoder pipelines take."""

    def __call__(
        self,
        prompt: Prompt,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        guidance_scale: float = 4.0,
        output_type: str = "pt",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Image embeddings for ``prompt``.

        :param prompt: a string or a list of strings.
        :param negative_prompt: what to steer away from; it also runs through the prior, and its embeddings
            become ``negative_image_embeds`` (without it: the embedding of a black image).
        :param num_images_per_prompt: embeddings per prompt.
        :param num_inference_steps: prior denoising steps.
        :param generator: one generator, or one per embedding drawn (prompts, then negative prompts).
        :param latents: ``(N, D)`` starting noise, ``N`` the number of embeddings drawn, ``D`` the prior's
            ``embedding_dim``.
        :param guidance_scale: classifier-free guidance weight of the prior (guides when ``> 1``).
        :param output_type: ``"pt"`` or ``"np"``.
        :returns: :class:`KandinskyPriorPipelineOutput` (or ``(image_embeds, negative_image_embeds)``).
        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        self._check(
            prompt,
            negative_prompt,
            num_images_per_prompt,
            num_inference_steps,
            guidance_scale,
            output_type,
            generator,
            callback_on_step_end_tensor_inputs,
        )
        prompts, negatives = self._prepare(prompt, negative_prompt, guidance_scale)
        total = len(prompts) * num_images_per_prompt
        shape = (total, self.prior.config.embedding_dim)
        if latents is not None and (not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape):
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"{type(self).__name__}: latents have shape {got}, expected {shape}")
        check_finite(latents, "latents", type(self).__name__)
        text = self.encode_prompt(prompts, num_images_per_prompt, self.do_classifier_free_guidance, negatives)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=text.embeds.dtype)
        start = latents.to(self.device) * self.scheduler.init_noise_sigma
        embeds = self.denoise_prior(
            start,
            self.scheduler.timesteps,
            text,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        return self.finish(embeds, negatives, output_type, return_dict)

    def interpolate(
        self,
        images_and_prompts: Sequence[str | PIL.Image.Image | torch.Tensor],
        weights: Sequence[float],
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        negative_prior_prompt: str | None = None,
        negative_prompt: str = "",
        guidance_scale: float = 4.0,
    ) -> KandinskyPriorPipelineOutput:
        """The weighted sum of the image embeddings of prompts and images, for mixing them in one image.

        :param images_and_prompts: prompts (run through the prior) and images (through the image encoder).
        :param weights: one weight per entry.
        :param negative_prompt: the prompt whose embedding becomes ``negative_image_embeds`` (``""``: the
            black-image embedding).
        :raises ValueError: when the lengths differ or an entry is neither a prompt nor an image.
        """
        if len(images_and_prompts) != len(weights):
            raise ValueError(
                f"{type(self).__name__}.interpolate: {len(images_and_prompts)} entries and {len(weights)} weights; "
                "pass one weight per entry"
            )
        total = None
        for cond, weight in zip(images_and_prompts, weights):
            if isinstance(cond, str):
                emb = self(
                    cond,
                    num_inference_steps=num_inference_steps,
                    num_images_per_prompt=num_images_per_prompt,
                    generator=generator,
                    latents=latents,
                    negative_prompt=negative_prior_prompt,
                    guidance_scale=guidance_scale,
                ).image_embeds
            elif isinstance(cond, (PIL.Image.Image, torch.Tensor)):
                emb = self.encode_image(cond if isinstance(cond, torch.Tensor) else [cond], num_images_per_prompt)
            else:
                raise ValueError(
                    f"{type(self).__name__}.interpolate: entries must be prompts, PIL images or tensors, got "
                    f"{type(cond).__name__}"
                )
            total = emb * weight if total is None else total + emb * weight
        zero = self(
            negative_prompt,
            num_inference_steps=num_inference_steps,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            latents=latents,
            negative_prompt=negative_prior_prompt,
            guidance_scale=guidance_scale,
        )
        negative = zero.negative_image_embeds if negative_prompt == "" else zero.image_embeds
        if total is None:
            raise ValueError(f"{type(self).__name__}.interpolate: pass at least one prompt or image")
        return KandinskyPriorPipelineOutput(image_embeds=total, negative_image_embeds=negative)


class KandinskyV22PriorEmb2EmbPipeline(_KandinskyPriorBase):
    """Kandinsky 2.2 prior from an image: the image's CLIP embedding noised to ``strength``, then denoised
    towards the prompt."""

    _exclude_from_cpu_offload = ("prior",)

    def __call__(
        self,
        prompt: Prompt,
        image: ImageCond,
        strength: float = 0.3,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: int = 25,
        generator: Generator = None,
        guidance_scale: float = 4.0,
        output_type: str = "pt",
        return_dict: bool = True,
    ) -> Any:
        """Image embeddings that move ``image`` towards ``prompt``.

        :param image: PIL image(s), ``(B, 3, S, S)`` pixel tensors for the image encoder, or ``(B, D)``
            image embeddings.
        :param strength: the fraction of the prior schedule that runs, in whole steps (1.0: from noise).

        The other arguments are :class:`KandinskyV22PriorPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        name = type(self).__name__
        self._check(
            prompt, negative_prompt, num_images_per_prompt, num_inference_steps, guidance_scale, output_type, generator
        )
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"{name}: strength must be a number in [0, 1], got {strength!r}")
        items = list(image) if isinstance(image, (list, tuple)) else [image]
        if not items or not all(isinstance(i, (PIL.Image.Image, torch.Tensor)) for i in items):
            raise TypeError(f"{name}: image must be PIL images or tensors, got {type(image).__name__}")
        if isinstance(items[0], torch.Tensor):
            stacked = torch.cat(items)  # type: ignore[arg-type]
            if stacked.ndim not in (2, 4):
                raise ValueError(
                    f"{name}: an image tensor must be (batch, 3, height, width) pixels or (batch, features) "
                    f"embeddings, got {tuple(stacked.shape)}"
                )
            check_finite(stacked, "image", name)
        prompts, negatives = self._prepare(prompt, negative_prompt, guidance_scale)
        total = len(prompts) * num_images_per_prompt
        text = self.encode_prompt(prompts, num_images_per_prompt, self.do_classifier_free_guidance, negatives)
        if isinstance(items[0], torch.Tensor) and stacked.ndim == 2:
            embeds = stacked.repeat_interleave(num_images_per_prompt, dim=0)
        else:
            embeds = self.encode_image(items, num_images_per_prompt)  # type: ignore[arg-type]
        embeds = embeds.to(self.device, text.embeds.dtype)
        if total % embeds.shape[0]:
            raise ValueError(f"{name}: cannot spread {embeds.shape[0]} image embeddings over {total} outputs")
        embeds = embeds.repeat(total // embeds.shape[0], 1)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        steps = cut_schedule(self.scheduler, strength=strength, pipeline=name).timesteps
        noise = randn_tensor(embeds.shape, generator=generator, device=self.device, dtype=embeds.dtype)
        start = self.scheduler.add_noise(embeds, noise, steps[:1].repeat(total))
        out = self.denoise_prior(start, steps, text, generator)
        return self.finish(out, negatives, output_type, return_dict)
