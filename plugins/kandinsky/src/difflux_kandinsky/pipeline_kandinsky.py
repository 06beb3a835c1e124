"""Kandinsky 2.1 decoders: a prompt and its CLIP image embeddings to images, from noise, an image or a mask.

Kandinsky 2.1's UNet reads both the text (M-CLIP token states through ``text_image_proj``, the pooled
text embedding through the ``text_image`` time embedding) and the image embedding of the prior; the
rest (MoVQ, learned variance, guidance) is Kandinsky 2.2's decoder, on the same SD base loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple

import torch
from difflux.pipeline_utils import LegacyCallback
from difflux.protocols import Scheduler
from difflux.torch_utils import randn_tensor
from difflux_stable_diffusion._base import Denoise, Sampling
from difflux_stable_diffusion.images import ImageInput
from difflux_stable_diffusion.prompts import prompt_list

from ._decoder import Embeds, Generator, KandinskyV22DecoderBase
from .pipeline_kandinsky2_2_prior import KandinskyV22PriorPipeline, Prompt

__all__ = ["KandinskyImg2ImgPipeline", "KandinskyInpaintPipeline", "KandinskyPipeline", "KandinskyPriorPipeline"]


class KandinskyPriorPipeline(KandinskyV22PriorPipeline):
    """Kandinsky 2.1 prior: prompts to CLIP image embeddings (the same prior as 2.2's, under 2.1's name)."""


class TextBegun(NamedTuple):
    """A checked 2.1 run: the image count, the loop options, the token states ``(B', T, W)`` the UNet sees, their
    negative half, and the UNet's ``added_cond_kwargs`` (pooled text and image embeddings)."""

    total: int
    opts: Sampling
    states: torch.Tensor
    negative: torch.Tensor | None
    added: dict[str, torch.Tensor]


class _KandinskyTextDecoder(KandinskyV22DecoderBase):
    """Shared steps of the Kandinsky 2.1 decoders: M-CLIP prompt encoding on top of the 2.2 decoder steps.

    Components: ``text_encoder`` (:class:`~difflux_kandinsky.text_encoder.MultilingualCLIP`), ``tokenizer``
    (``XLMRobertaTokenizer``), ``unet``, ``scheduler`` (``DDIMScheduler`` as published), ``movq``.
    """

    model_cpu_offload_seq = "text_encoder->unet->movq"
    _callback_tensor_inputs: tuple[str, ...] = ("latents",)
    _embeds_names: ClassVar[tuple[str, str]] = ("text_encoder_hidden_states", "negative_text_encoder_hidden_states")
    #: Kandinsky 2.1 tokenizes to 77 tokens whatever the tokenizer's own limit
    max_length = 77

    text_encoder: Any
    tokenizer: Any

    def __init__(self, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Scheduler, movq: Any) -> None:
        super(KandinskyV22DecoderBase, self).__init__()
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, movq=movq)

    def check_prompts(self, prompt: Prompt, negative_prompt: Prompt | None, embeds: int) -> int:
        """The number of prompts; it must match the number of image embeddings.

        :raises TypeError | ValueError: naming the argument.
        """
        name = type(self).__name__
        for label, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and not isinstance(value, (str, list, tuple)):
                raise TypeError(f"{name}: {label} must be a string or a list of strings, got {type(value).__name__}")
        prompts = prompt_list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"{name}: prompt must be a string or a non-empty list of strings")
        negatives = prompt_list(negative_prompt)
        if negatives is not None and len(negatives) != len(prompts) and not isinstance(negative_prompt, str):
            raise ValueError(
                f"{name}: {len(negatives)} negative prompts for {len(prompts)} prompts; pass one per prompt"
            )
        if embeds != len(prompts):
            raise ValueError(
                f"{name}: {embeds} image_embeds for {len(prompts)} prompts; pass the prior's embeddings of the prompts"
            )
        return len(prompts)

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_attention_mask=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        mask = inputs.attention_mask.to(self.device)
        pooled, states = self.text_encoder(input_ids=inputs.input_ids.to(self.device), attention_mask=mask)
        return pooled, states

    def encode_prompt(
        self, prompt: Prompt, negative_prompt: Prompt | None, per_prompt: int, guidance: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(pooled text embeddings (B', D), token states (B', T, W), negative token states or None)``: each
        repeated per image, ``[negative, positive]`` when guiding (``B' = 2 * B * per_prompt``)."""
        prompts = list(prompt_list(prompt) or [])
        pooled, states = self._encode(prompts)
        pooled, states = pooled.repeat_interleave(per_prompt, 0), states.repeat_interleave(per_prompt, 0)
        if not guidance:
            return pooled, states, None
        negatives = prompt_list(negative_prompt)
        negatives = [""] * len(prompts) if negatives is None else list(negatives) * (len(prompts) // len(negatives))
        neg_pooled, neg_states = self._encode(negatives)
        neg_pooled, neg_states = (
            neg_pooled.repeat_interleave(per_prompt, 0),
            neg_states.repeat_interleave(per_prompt, 0),
        )
        return torch.cat([neg_pooled, pooled]), torch.cat([neg_states, states]), neg_states

    def begin_text(self, call: Mapping[str, Any]) -> TextBegun:
        """Check a 2.1 decoder call's arguments (its ``locals()``) before any model runs, set the run state
        (:meth:`sampling`), encode the prompts and batch the image embeddings.

        :raises TypeError | ValueError: naming the argument.
        """
        prompt, negative_prompt, per_prompt = call["prompt"], call["negative_prompt"], call["num_images_per_prompt"]
        positive, negative = self.check_embeds(
            call["image_embeds"], call["negative_image_embeds"], call["guidance_scale"]
        )
        batch = self.check_prompts(prompt, negative_prompt, positive.shape[0])
        total = self.check_run(
            batch,
            call["height"],
            call["width"],
            call["num_inference_steps"],
            per_prompt,
            call["generator"],
            call.get("latents"),
            call["output_type"],
            ("latents",),
            strength=call.get("strength"),
        )
        opts = self.sampling(
            call["guidance_scale"],
            generator=call["generator"],
            legacy=call["callback"],
            legacy_steps=call["callback_steps"],
        )
        pooled, states, neg_states = self.encode_prompt(prompt, negative_prompt, per_prompt, opts.guidance)
        embeds, _ = self.image_embeds(positive, negative, per_prompt, opts.guidance)
        added = {"text_embeds": pooled.to(embeds.dtype), "image_embeds": embeds}
        return TextBegun(total, opts, states, neg_states, added)


class KandinskyPipeline(_KandinskyTextDecoder):
    """Kandinsky 2.1 text-to-image decoder: a prompt and the prior's image embeddings to images."""

    def __call__(
        self,
        prompt: Prompt,
        image_embeds: Embeds,
        negative_image_embeds: Embeds | None = None,
        negative_prompt: Prompt | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        return_dict: bool = True,
    ) -> Any:
        """Generate images for ``prompt`` and its image embeddings.

        :param prompt: a string or a list of strings, one per image embedding.
        :param image_embeds: ``(B, D)`` from :class:`KandinskyPriorPipeline` (``D`` = 768 published).
        :param negative_prompt: text to steer away from (default ``""`` when guiding).

        The other arguments are :class:`~difflux_kandinsky.KandinskyV22Pipeline`'s (2.1 has only the legacy
        ``callback`` / ``callback_steps``, as in Diffusers).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        total, opts, states, negative, added = self.begin_text(locals())
        steps = self.schedule(num_inference_steps)
        start = self.prepare_latents(self.latent_shape(total, height, width), states.dtype, generator, latents)
        run = Denoise(steps, states, opts, added_cond_kwargs=added)
        return self.output(self.denoise(start, run, negative), output_type, return_dict, generator)


def kandinsky21_noise(latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
    """Kandinsky 2.1's image-to-image start: ``latents`` noised to ``timestep`` on a fixed linear DDPM schedule
    (betas 1e-4 .. 0.02 over 1000 steps), whatever the pipeline's scheduler."""
    betas = torch.linspace(0.0001, 0.02, 1000, dtype=torch.float32)
    alpha_bar = torch.cumprod(1.0 - betas, dim=0)[timestep].to(latents.device, latents.dtype)
    return alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise


class KandinskyImg2ImgPipeline(_KandinskyTextDecoder):
    """Kandinsky 2.1 image-to-image: ``image`` noised to ``strength``, then denoised towards the prompt."""

    def __call__(
        self,
        prompt: Prompt,
        image: ImageInput,
        image_embeds: Embeds,
        negative_image_embeds: Embeds | None = None,
        negative_prompt: Prompt | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        strength: float = 0.3,
        guidance_scale: float = 7.0,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        output_type: str = "pil",
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        return_dict: bool = True,
    ) -> Any:
        """Transform ``image`` towards ``prompt`` and its image embeddings.

        :param image: PIL image(s), arrays or tensors, resized (bicubic) to ``height`` x ``width`` pixels.
        :param strength: the fraction of the schedule that runs. The start is the image's latents noised, as
            Kandinsky 2.1 does, to training step ``int(1000 * strength) - 2`` of a fixed linear schedule.

        The other arguments are :class:`KandinskyPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        self.check_images(image=image)
        total, opts, states, negative, added = self.begin_text(locals())
        known = self.movq_latents(image, height, width, total, num_images_per_prompt, states.dtype, generator)
        steps = self.schedule(num_inference_steps, strength=strength)
        start = known * self.scheduler.init_noise_sigma
        noise = randn_tensor(start.shape, generator=generator, device=self.device, dtype=start.dtype)
        timestep = int(self.scheduler.config.num_train_timesteps * float(strength)) - 2
        start = kandinsky21_noise(start, noise, max(timestep, 0))
        run = Denoise(steps, states, opts, added_cond_kwargs=added)
        return self.output(self.denoise(start, run, negative), output_type, return_dict, generator)


class KandinskyInpaintPipeline(_KandinskyTextDecoder):
    """Kandinsky 2.1 inpainting: repaint the white part of ``mask_image`` towards the prompt.

    The UNet (9 input channels) sees the latents, the masked image's latents and the keep-mask; unlike
    2.2, Kandinsky 2.1 does not reset the kept region between steps.
    """

    def __call__(
        self,
        prompt: Prompt,
        image: ImageInput,
        mask_image: ImageInput,
        image_embeds: Embeds,
        negative_image_embeds: Embeds | None = None,
        negative_prompt: Prompt | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        return_dict: bool = True,
    ) -> Any:
        """Inpaint ``image`` where ``mask_image`` is white (>= 0.5), towards ``prompt``.

        The arguments are :class:`KandinskyPipeline`'s plus ``image`` and ``mask_image``
        (:class:`~difflux_kandinsky.KandinskyV22InpaintPipeline`).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        self.check_images(image=image, mask_image=mask_image)
        total, opts, states, negative, added = self.begin_text(locals())
        known, keep = self.inpaint_inputs(image, mask_image, height, width, total, num_images_per_prompt, states.dtype)
        steps = self.schedule(num_inference_steps)
        start = self.prepare_latents(self.latent_shape(total, height, width), states.dtype, generator, latents)
        run = Denoise(steps, states, opts, added_cond_kwargs=added)
        self.inpaint_channels(run, known, keep)
        return self.output(self.denoise(start, run, negative), output_type, return_dict, generator)
