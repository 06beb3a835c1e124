"""Kandinsky 3: T5 text conditioning straight into a ``Kandinsky3UNet``, decoded by MoVQ.

Source: Arkhipkin et al., *Kandinsky 3.0 Technical Report* (2023, arXiv:2312.03511). No prior: the
UNet cross-attends to FLAN-UL2 (T5) token states under their attention mask. The loop is the SD base's;
guidance is Kandinsky 3's ``(s + 1) * conditional - s * unconditional``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback, check_finite
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Denoise, fit
from difflux_stable_diffusion.images import ImageInput
from difflux_stable_diffusion.prompts import prompt_list

from ._decoder import Generator, KandinskyV22DecoderBase
from .pipeline_kandinsky2_2_prior import Prompt

__all__ = ["Kandinsky3Img2ImgPipeline", "Kandinsky3Pipeline"]


class _Kandinsky3Base(KandinskyV22DecoderBase):
    """Shared steps of Kandinsky 3. Components: ``tokenizer`` (``T5Tokenizer``), ``text_encoder``
    (``T5EncoderModel``), ``unet`` (``Kandinsky3UNet``), ``scheduler`` (``DDPMScheduler``), ``movq`` (``VQModel``)."""

    model_cpu_offload_seq = "text_encoder->unet->movq"
    _callback_tensor_inputs: tuple[str, ...] = (
        "latents",
        "prompt_embeds",
        "negative_prompt_embeds",
        "negative_attention_mask",
        "attention_mask",
    )
    _embeds_names: ClassVar[tuple[str, str]] = ("prompt_embeds", "negative_prompt_embeds")
    #: T5 tokens per prompt before the padding is cut
    max_length = 128

    tokenizer: Any
    text_encoder: Any

    def __init__(self, tokenizer: Any, text_encoder: Any, unet: Any, scheduler: Scheduler, movq: Any) -> None:
        super(KandinskyV22DecoderBase, self).__init__()
        self.register_modules(tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, scheduler=scheduler, movq=movq)

    def uses_guidance(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def guide(self, noise_pred: torch.Tensor, channels: int) -> torch.Tensor:
        """Kandinsky 3's guidance: ``(s + 1) * conditional - s * unconditional`` (``s = guidance_scale``)."""
        uncond, text = noise_pred.chunk(2)
        guided: torch.Tensor = (self._guidance_scale + 1.0) * text - self._guidance_scale * uncond
        return guided

    # -- prompts ---------------------------------------------------------------------------

    def check_prompts(
        self,
        prompt: Prompt | None,
        negative_prompt: Prompt | None,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        negative_attention_mask: torch.Tensor | None,
    ) -> int:
        """The prompt batch; prompts and embeddings checked against each other.

        :raises TypeError | ValueError: naming the argument.
        """
        name = type(self).__name__
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError(f"{name}: pass prompt or prompt_embeds (with attention_mask), exactly one")
        for label, value in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if value is not None and (
                not isinstance(value, (str, list, tuple))
                or not all(isinstance(p, str) for p in prompt_list(value) or [])
            ):
                raise TypeError(f"{name}: {label} must be a string or a list of strings, got {type(value).__name__}")
        if prompt_embeds is not None:
            if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim != 3:
                raise ValueError(f"{name}: prompt_embeds must be a (batch, tokens, features) tensor")
            if not isinstance(attention_mask, torch.Tensor) or tuple(attention_mask.shape) != prompt_embeds.shape[:2]:
                raise ValueError(f"{name}: prompt_embeds need attention_mask shaped (batch, tokens) like them")
            check_finite(prompt_embeds, "prompt_embeds", name)
        if negative_prompt_embeds is not None and (
            not isinstance(negative_attention_mask, torch.Tensor)
            or not isinstance(negative_prompt_embeds, torch.Tensor)
            or tuple(negative_attention_mask.shape) != negative_prompt_embeds.shape[:2]
        ):
            raise ValueError(f"{name}: negative_prompt_embeds need negative_attention_mask shaped (batch, tokens)")
        batch = len(prompt_list(prompt) or []) if prompt is not None else int(prompt_embeds.shape[0])  # type: ignore[union-attr]
        negatives = prompt_list(negative_prompt)
        if negatives is not None and not isinstance(negative_prompt, str) and len(negatives) != batch:
            raise ValueError(f"{name}: {len(negatives)} negative prompts for {batch} prompts; pass one per prompt")
        return batch

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        mask = inputs.attention_mask.to(self.device)
        states: torch.Tensor = self.text_encoder(inputs.input_ids.to(self.device), attention_mask=mask)[0]
        return states, mask

    def encode_prompt(
        self,
        prompt: Prompt | None,
        negative_prompt: Prompt | None,
        per_prompt: int,
        guidance: bool,
        prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(token states (B, T, W), mask (B, T), negative states, negative mask)``, each repeated per image.

        Padding is cut to the longest prompt plus one token and zeroed. Without a negative prompt the
        negative states are zeros under an all-zero mask (Kandinsky 3's unconditional input).
        """
        if prompt_embeds is None:
            states, mask = self._encode(list(prompt_list(prompt) or []))
            states = states.masked_fill(mask.unsqueeze(-1) == 0, 0.0)
            keep = int(mask.sum(-1).max()) + 1
            states, mask = states[:, :keep], mask[:, :keep]
        else:
            states, mask = prompt_embeds.to(self.device), attention_mask.to(self.device)  # type: ignore[union-attr]
        dtype = self.text_encoder.dtype if self.text_encoder is not None else states.dtype
        states = (states * mask.unsqueeze(2)).to(dtype)
        # each prompt's states and mask repeated per image (Diffusers tiles the masks: wrong for several prompts)
        states, mask = states.repeat_interleave(per_prompt, 0), mask.repeat_interleave(per_prompt, 0)
        if not guidance:
            return states, mask, None, None
        if negative_prompt_embeds is not None and negative_attention_mask is not None:
            neg, neg_mask = negative_prompt_embeds.to(self.device, dtype), negative_attention_mask.to(self.device)
        elif negative_prompt is not None:
            negatives = list(prompt_list(negative_prompt) or [])
            neg, neg_mask = self._encode(negatives * (states.shape[0] // per_prompt // len(negatives)))
            neg, neg_mask = neg[:, : states.shape[1]], neg_mask[:, : states.shape[1]]
            neg = (neg * neg_mask.unsqueeze(2)).to(dtype)
        else:
            return states, mask, torch.zeros_like(states), torch.zeros_like(mask)
        if neg.shape != states.shape:
            neg, neg_mask = neg.repeat_interleave(per_prompt, 0), neg_mask.repeat_interleave(per_prompt, 0)
        return states, mask, neg, neg_mask

    def conditioning(
        self,
        opts: Any,
        states: torch.Tensor,
        mask: torch.Tensor,
        neg: torch.Tensor | None,
        neg_mask: torch.Tensor | None,
        steps: torch.Tensor,
    ) -> Denoise:
        """The loop's conditioning: ``[negative, positive]`` states and boolean masks when guiding."""
        if opts.guidance and neg is not None and neg_mask is not None:
            embeds, masks = torch.cat([neg, states]), torch.cat([neg_mask, mask]).bool()
        else:
            embeds, masks = states, mask.bool()
        run = Denoise(steps, embeds, opts)
        run.extra.update(attention_mask=masks, negative_attention_mask=neg_mask)
        return run

    def predict_noise(
        self,
        run: Denoise,
        t: torch.Tensor,
        model_input: torch.Tensor,
        embeds: torch.Tensor,
        tensors: dict[str, torch.Tensor | None] | None = None,
        *,
        step: int = 0,
    ) -> Any:
        """The Kandinsky 3 UNet under the (current) attention mask."""
        source = run.extra if tensors is None else tensors
        mask = fit(source["attention_mask"], model_input.shape[0])
        x = self.scheduler.scale_model_input(model_input, t)
        return self.unet(x, t, encoder_hidden_states=embeds, encoder_attention_mask=mask, return_dict=False)[0]

    def check_size(self, height: Any, width: Any) -> None:
        name = type(self).__name__
        for label, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"{name}: {label} must be a positive int number of pixels, got {value!r}")


class Kandinsky3Pipeline(_Kandinsky3Base):
    """Kandinsky 3 text-to-image."""

    def __call__(
        self,
        prompt: Prompt | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        height: int = 1024,
        width: int = 1024,
        generator: Generator = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Generate images for ``prompt``.

        :param prompt: a string or a list of strings (or ``prompt_embeds`` ``(B, T, W)`` with ``attention_mask``
            ``(B, T)``).
        :param guidance_scale: ``s`` of ``(s + 1) * conditional - s * unconditional``; guides when ``> 1``.
        :param negative_prompt: what to steer away from; without it the unconditional input is all zeros.
        :param height: image height in pixels, rounded up to a multiple of ``movq_scale_factor**2`` (64).
        :param width: image width in pixels, rounded the same way.
        :param callback_on_step_end: may read and replace ``latents``, ``prompt_embeds``,
            ``negative_prompt_embeds``, ``attention_mask``, ``negative_attention_mask``.

        The other arguments are :class:`~difflux_kandinsky.KandinskyV22Pipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        batch = self.check_prompts(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, attention_mask, negative_attention_mask
        )
        self.check_size(height, width)
        total = self.check_run(
            batch,
            height,
            width,
            num_inference_steps,
            num_images_per_prompt,
            generator,
            latents,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        opts = self.sampling(
            guidance_scale,
            generator=generator,
            callback=callback_on_step_end,
            callback_names=callback_on_step_end_tensor_inputs,
            legacy=callback,
            legacy_steps=callback_steps,
        )
        states, mask, neg, neg_mask = self.encode_prompt(
            prompt,
            negative_prompt,
            num_images_per_prompt,
            opts.guidance,
            prompt_embeds,
            attention_mask,
            negative_prompt_embeds,
            negative_attention_mask,
        )
        steps = self.schedule(num_inference_steps)
        start = self.prepare_latents(self.latent_shape(total, height, width), states.dtype, generator, latents)
        run = self.conditioning(opts, states, mask, neg, neg_mask, steps)
        return self.output(self.denoise(start, run, neg), output_type, return_dict, generator)


class Kandinsky3Img2ImgPipeline(_Kandinsky3Base):
    """Kandinsky 3 image-to-image: ``image`` noised to ``strength``, then denoised towards the prompt."""

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        strength: float = 0.3,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Transform ``image`` (kept at its own size, rounded down to a multiple of ``movq_scale_factor``), towards
        ``prompt``; ``strength`` is the fraction of the schedule that runs. The other arguments are
        :class:`Kandinsky3Pipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        name = type(self).__name__
        batch = self.check_prompts(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, attention_mask, negative_attention_mask
        )
        self.check_image(image)
        check_finite(image, "image", name)
        self.check_run(
            batch,
            64,
            64,
            num_inference_steps,
            num_images_per_prompt,
            generator,
            None,
            output_type,
            callback_on_step_end_tensor_inputs,
            strength=strength,
        )
        opts = self.sampling(
            guidance_scale,
            generator=generator,
            callback=callback_on_step_end,
            callback_names=callback_on_step_end_tensor_inputs,
            legacy=callback,
            legacy_steps=callback_steps,
        )
        states, mask, neg, neg_mask = self.encode_prompt(
            prompt,
            negative_prompt,
            num_images_per_prompt,
            opts.guidance,
            prompt_embeds,
            attention_mask,
            negative_attention_mask=negative_attention_mask,
            negative_prompt_embeds=negative_prompt_embeds,
        )
        pixels = self.pixels_at_own_size(image)
        total = batch * num_images_per_prompt
        known = self.latents_of(pixels, total, num_images_per_prompt, states.dtype, generator)
        steps = self.schedule(num_inference_steps, strength=strength)
        start = self.add_noise(known, steps, generator)
        run = self.conditioning(opts, states, mask, neg, neg_mask, steps)
        return self.output(self.denoise(start, run, neg), output_type, return_dict, generator)

    def pixels_at_own_size(self, image: ImageInput | None) -> torch.Tensor:
        """``image`` in ``[-1, 1]`` at its own size rounded down to a multiple of ``movq_scale_factor`` (bicubic)."""
        from difflux_stable_diffusion.images import preprocess_image

        if image is None:
            raise ValueError(f"{type(self).__name__}: pass image")
        return preprocess_image(
            image,
            multiple=self.movq_scale_factor,
            latent_channels=self.movq.config.latent_channels,
            resample="bicubic",
            reducing_gap=1,
        )
