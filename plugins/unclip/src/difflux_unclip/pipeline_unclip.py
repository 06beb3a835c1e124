"""unCLIP (Karlo): text to a CLIP image embedding (prior), to a 64 px image (decoder), to 256 px (super-resolution).

Source: Ramesh et al., *Hierarchical Text-Conditional Image Generation with CLIP Latents* (2022,
arXiv:2204.06125). The prior runs the shared unCLIP prior loop (:mod:`difflux_kandinsky.prior`); the
decoder and the two super-resolution UNets run the Stable Diffusion base's loop in pixel space, each
stage with its own ``UnCLIPScheduler``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import PIL.Image
import torch
import torch.nn.functional as F
from difflux.pipeline_utils import check_batch, check_finite, check_output_type, check_steps
from difflux.protocols import Scheduler
from difflux.torch_utils import randn_tensor
from difflux_kandinsky.prior import PriorText, denoise_prior, encode_prior_prompt
from difflux_stable_diffusion._base import Denoise, ImagesOnly, StableDiffusionBase, fit
from difflux_stable_diffusion.prompts import prompt_list

__all__ = ["UnCLIPImageVariationPipeline", "UnCLIPPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None


class _UnCLIPDecoding(ImagesOnly, StableDiffusionBase):
    """The decoder and super-resolution stages shared by the unCLIP pipelines (not registered).

    The SD base's steps address ``unet`` and ``scheduler``: here they are the current stage's
    (``decoder`` / ``decoder_scheduler``, then ``super_res_first`` and ``super_res_last`` /
    ``super_res_scheduler``).
    """

    _optional_components: ClassVar[tuple[str, ...]] = ()
    _callback_tensor_inputs: tuple[str, ...] = ("latents",)

    decoder: Any
    text_proj: Any
    text_encoder: Any
    tokenizer: Any
    super_res_first: Any
    super_res_last: Any
    decoder_scheduler: Any
    super_res_scheduler: Any

    _stage: str = "decoder"

    @property
    def unet(self) -> Any:
        return self.__dict__.get("decoder") if self._stage == "decoder" else self.__dict__.get("super_res_first")

    @property
    def scheduler(self) -> Any:
        key = "decoder_scheduler" if self._stage == "decoder" else "super_res_scheduler"
        return self.__dict__.get(key)

    def uses_guidance(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def decode(self, latents: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """The stages work in pixels: the final sample is the image in ``[-1, 1]``."""
        return latents

    def check_run(
        self,
        batch: int,
        num_images_per_prompt: Any,
        steps: dict[str, Any],
        generator: Generator,
        output_type: str,
        latents: dict[str, tuple[torch.Tensor | None, tuple[int, ...]]],
    ) -> int:
        """Check the run options before any model runs; returns the number of images.

        :raises TypeError | ValueError: naming the argument.
        """
        name = type(self).__name__
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, numbers.Integral):
            raise TypeError(f"{name}: num_images_per_prompt must be an int, got {num_images_per_prompt!r}")
        if num_images_per_prompt < 1:
            raise ValueError(f"{name}: num_images_per_prompt={num_images_per_prompt} must be at least 1")
        for label, value in steps.items():
            check_steps(value, f"{name} ({label})")
        check_output_type(output_type, ("pil", "np", "pt"), name)
        total = batch * int(num_images_per_prompt)
        check_batch(total, generator)
        for label, (value, shape) in latents.items():
            if value is None:
                continue
            expected = (total, *shape)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"{name}: {label} have shape {got}, expected {expected}")
            check_finite(value, label, name)
        return total

    def decoder_shape(self) -> tuple[int, ...]:
        size = self.decoder.config.sample_size
        return (self.decoder.config.in_channels, size, size)

    def super_res_shape(self) -> tuple[int, ...]:
        size = self.super_res_first.config.sample_size
        return (self.super_res_first.config.in_channels // 2, size, size)

    def decode_stages(
        self,
        image_embeddings: torch.Tensor,
        text: PriorText,
        guidance: bool,
        decoder_guidance_scale: float,
        decoder_steps: int,
        super_res_steps: int,
        generator: Generator,
        decoder_latents: torch.Tensor | None,
        super_res_latents: torch.Tensor | None,
        output_type: str,
        return_dict: bool,
    ) -> Any:
        """The decoder (64 px, guided) and the super-resolution stage (256 px) from image embeddings ``(N, D)``.

        ``text``: the CLIP text conditioning, doubled when ``guidance``.
        """
        states, time_embeds = self.text_proj(
            image_embeddings=image_embeddings,
            prompt_embeds=text.embeds,
            text_encoder_hidden_states=text.hidden_states,
            do_classifier_free_guidance=guidance,
        )
        mask = F.pad(text.mask, (self.text_proj.clip_extra_context_tokens, 0), value=True)
        total = image_embeddings.shape[0]
        try:
            self._stage = "decoder"
            opts = self.sampling(decoder_guidance_scale, generator=generator)
            opts.guidance = guidance
            steps = self.schedule(decoder_steps)
            start = self.prepare_latents((total, *self.decoder_shape()), states.dtype, generator, decoder_latents)
            run = Denoise(steps, states, opts, class_labels=time_embeds)
            run.extra["attention_mask"] = mask
            run.control = lambda i, t, x, e, added, tensors: {"attention_mask": fit(tensors["attention_mask"], len(x))}
            small = self.denoise(start, run).clamp(-1, 1)

            self._stage = "super_res"
            height, width = self.super_res_shape()[1:]
            upscaled = F.interpolate(small, size=[height, width], mode="bicubic", align_corners=False, antialias=True)
            opts = self.sampling(1.0, generator=generator)
            steps = self.schedule(super_res_steps)
            shape = (total, *self.super_res_shape())
            start = self.prepare_latents(shape, small.dtype, generator, super_res_latents)
            last = len(steps) - 1

            def predict(i: int, t: torch.Tensor, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
                unet = self.super_res_last if i == last else self.super_res_first
                x = self.scheduler.scale_model_input(x, t)
                out: torch.Tensor = unet(torch.cat([x, image], dim=1), t).sample
                return out

            image = self.denoise(start, Denoise(steps, upscaled, opts, predict=predict))
        finally:
            self._stage = "decoder"
        return self.output(image, output_type, return_dict, generator)


class UnCLIPPipeline(_UnCLIPDecoding):
    """unCLIP text-to-image: prior, decoder and super-resolution in one call.

    Components: ``prior`` (``PriorTransformer``), ``decoder`` (``UNet2DConditionModel``, learned variance,
    ``class_embed_type="identity"``), ``text_encoder`` (``CLIPTextModelWithProjection``), ``tokenizer``,
    ``text_proj`` (``UnCLIPTextProjModel``), ``super_res_first`` / ``super_res_last`` (``UNet2DModel``), and
    ``prior_scheduler`` / ``decoder_scheduler`` / ``super_res_scheduler`` (``UnCLIPScheduler``).
    """

    model_cpu_offload_seq = "text_encoder->text_proj->decoder->super_res_first->super_res_last"
    _exclude_from_cpu_offload = ("prior",)

    prior: Any
    prior_scheduler: Any

    def __init__(
        self,
        prior: Any,
        decoder: Any,
        text_encoder: Any,
        tokenizer: Any,
        text_proj: Any,
        super_res_first: Any,
        super_res_last: Any,
        prior_scheduler: Scheduler,
        decoder_scheduler: Scheduler,
        super_res_scheduler: Scheduler,
    ) -> None:
        super().__init__()
        self.register_modules(
            prior=prior,
            decoder=decoder,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_proj=text_proj,
            super_res_first=super_res_first,
            super_res_last=super_res_last,
            prior_scheduler=prior_scheduler,
            decoder_scheduler=decoder_scheduler,
            super_res_scheduler=super_res_scheduler,
        )

    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        prior_num_inference_steps: int = 25,
        decoder_num_inference_steps: int = 25,
        super_res_num_inference_steps: int = 7,
        generator: Generator = None,
        prior_latents: torch.Tensor | None = None,
        decoder_latents: torch.Tensor | None = None,
        super_res_latents: torch.Tensor | None = None,
        text_model_output: Any = None,
        text_attention_mask: torch.Tensor | None = None,
        prior_guidance_scale: float = 4.0,
        decoder_guidance_scale: float = 8.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> Any:
        """Images for ``prompt``.

        :param prompt: a string or a list of strings (or ``text_model_output``: ``(text_embeds (B, D),
            last_hidden_state (B, T, W))`` of the CLIP text encoder, with ``text_attention_mask`` ``(B, T)``).
        :param num_images_per_prompt: images per prompt.
        :param prior_num_inference_steps: prior steps; ``decoder_num_inference_steps`` and
            ``super_res_num_inference_steps`` the other stages' (the last super-resolution step uses
            ``super_res_last``).
        :param prior_latents: ``(N, D)``; ``decoder_latents`` ``(N, 3, 64, 64)``; ``super_res_latents``
            ``(N, 3, 256, 256)`` for the published sizes (the UNets' ``sample_size``), ``N`` the number of images.
        :param prior_guidance_scale: the prior's guidance; ``decoder_guidance_scale`` the decoder's. Both
            stages see the doubled (guided) conditioning when either is ``> 1``, as in Diffusers.
        :param output_type: ``"pil"``, ``"np"`` or ``"pt"``.
        :returns: ``ImagePipelineOutput`` (or ``(images,)``).
        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        name = type(self).__name__
        if prompt is None and text_model_output is None:
            raise ValueError(f"{name}: pass prompt (a string or a list of strings) or text_model_output")
        if prompt is not None and (
            not isinstance(prompt, (str, list, tuple)) or not all(isinstance(p, str) for p in prompt_list(prompt) or [])
        ):
            raise TypeError(f"{name}: prompt must be a string or a list of strings, got {type(prompt).__name__}")
        prompts = list(prompt_list(prompt) or []) if prompt is not None else None
        batch = len(prompts) if prompts is not None else int(text_model_output[0].shape[0])
        if batch < 1:
            raise ValueError(f"{name}: prompt is an empty list")
        for label, value in (
            ("prior_guidance_scale", prior_guidance_scale),
            ("decoder_guidance_scale", decoder_guidance_scale),
        ):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name}: {label} must be a number, got {value!r}")
        total = self.check_run(
            batch,
            num_images_per_prompt,
            {
                "prior_num_inference_steps": prior_num_inference_steps,
                "decoder_num_inference_steps": decoder_num_inference_steps,
                "super_res_num_inference_steps": super_res_num_inference_steps,
            },
            generator,
            output_type,
            {
                "prior_latents": (prior_latents, (self.prior.config.embedding_dim,)),
                "decoder_latents": (decoder_latents, self.decoder_shape()),
                "super_res_latents": (super_res_latents, self.super_res_shape()),
            },
        )
        guidance = prior_guidance_scale > 1.0 or decoder_guidance_scale > 1.0
        text = self.text_conditioning(prompts, text_model_output, text_attention_mask, num_images_per_prompt, guidance)
        self._guidance_scale = float(prior_guidance_scale)
        self._interrupt = False
        self.prior_scheduler.set_timesteps(prior_num_inference_steps, device=self.device)
        shape = (total, self.prior.config.embedding_dim)
        if prior_latents is None:
            prior_latents = randn_tensor(shape, generator=generator, device=self.device, dtype=text.embeds.dtype)
        start = prior_latents.to(self.device) * self.prior_scheduler.init_noise_sigma
        if not guidance:
            self._guidance_scale = 1.0
        image_embeddings = denoise_prior(
            self, self.prior, self.prior_scheduler, start, self.prior_scheduler.timesteps, text, generator
        )
        return self.decode_stages(
            image_embeddings,
            text,
            guidance,
            decoder_guidance_scale,
            decoder_num_inference_steps,
            super_res_num_inference_steps,
            generator,
            decoder_latents,
            super_res_latents,
            output_type,
            return_dict,
        )

    def text_conditioning(
        self,
        prompts: list[str] | None,
        text_model_output: Any,
        text_attention_mask: torch.Tensor | None,
        per_prompt: int,
        guidance: bool,
    ) -> PriorText:
        """The CLIP text conditioning, from the prompts or from a given text encoder output (``[""]`` negatives)."""
        if prompts is not None:
            return encode_prior_prompt(self, prompts, per_prompt, guidance, None)
        if text_attention_mask is None:
            raise ValueError(f"{type(self).__name__}: text_model_output needs text_attention_mask")
        embeds = text_model_output[0].to(self.device).repeat_interleave(per_prompt, 0)
        hidden = text_model_output[1].to(self.device).repeat_interleave(per_prompt, 0)
        mask = text_attention_mask.to(self.device).bool().repeat_interleave(per_prompt, 0)
        if not guidance:
            return PriorText(embeds, hidden, mask)
        empty = encode_prior_prompt(self, [""] * (embeds.shape[0] // per_prompt), per_prompt, False, None)
        return PriorText(
            torch.cat([empty.embeds, embeds]), torch.cat([empty.hidden_states, hidden]), torch.cat([empty.mask, mask])
        )


class UnCLIPImageVariationPipeline(_UnCLIPDecoding):
    """unCLIP image variations: the CLIP image embedding of ``image`` through the decoder and super-resolution.

    Components: as :class:`UnCLIPPipeline` without the prior, plus ``feature_extractor``
    (``CLIPImageProcessor``) and ``image_encoder`` (``CLIPVisionModelWithProjection``).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->text_proj->decoder->super_res_first->super_res_last"

    feature_extractor: Any
    image_encoder: Any

    def __init__(
        self,
        decoder: Any,
        text_encoder: Any,
        tokenizer: Any,
        text_proj: Any,
        feature_extractor: Any,
        image_encoder: Any,
        super_res_first: Any,
        super_res_last: Any,
        decoder_scheduler: Scheduler,
        super_res_scheduler: Scheduler,
    ) -> None:
        super().__init__()
        self.register_modules(
            decoder=decoder,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_proj=text_proj,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
            super_res_first=super_res_first,
            super_res_last=super_res_last,
            decoder_scheduler=decoder_scheduler,
            super_res_scheduler=super_res_scheduler,
        )

    def __call__(
        self,
        image: PIL.Image.Image | Sequence[PIL.Image.Image] | torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        decoder_num_inference_steps: int = 25,
        super_res_num_inference_steps: int = 7,
        generator: Generator = None,
        decoder_latents: torch.Tensor | None = None,
        super_res_latents: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        decoder_guidance_scale: float = 8.0,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> Any:
        """Variations of ``image``.

        :param image: PIL image(s) or ``(B, 3, S, S)`` pixels prepared for the image encoder; or pass
            ``image_embeddings`` ``(B, D)`` instead.
        :param decoder_guidance_scale: the decoder's guidance (guides when ``> 1``).

        The other arguments are :class:`UnCLIPPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        name = type(self).__name__
        if (image is None) == (image_embeddings is None):
            raise ValueError(f"{name}: pass image or image_embeddings, exactly one")
        if image is not None:
            items = image if isinstance(image, (list, tuple)) else [image]
            if not items or not all(isinstance(i, (PIL.Image.Image, torch.Tensor)) for i in items):
                raise TypeError(f"{name}: image must be PIL images or a (batch, 3, H, W) tensor")
            batch = int(image.shape[0]) if isinstance(image, torch.Tensor) else len(items)
        else:
            if not isinstance(image_embeddings, torch.Tensor) or image_embeddings.ndim != 2:
                raise ValueError(f"{name}: image_embeddings must be a (batch, features) tensor")
            check_finite(image_embeddings, "image_embeddings", name)
            batch = int(image_embeddings.shape[0])
        if isinstance(decoder_guidance_scale, bool) or not isinstance(decoder_guidance_scale, numbers.Real):
            raise TypeError(f"{name}: decoder_guidance_scale must be a number, got {decoder_guidance_scale!r}")
        self.check_run(
            batch,
            num_images_per_prompt,
            {
                "decoder_num_inference_steps": decoder_num_inference_steps,
                "super_res_num_inference_steps": super_res_num_inference_steps,
            },
            generator,
            output_type,
            {
                "decoder_latents": (decoder_latents, self.decoder_shape()),
                "super_res_latents": (super_res_latents, self.super_res_shape()),
            },
        )
        guidance = decoder_guidance_scale > 1.0
        text = encode_prior_prompt(self, [""] * batch, num_images_per_prompt, guidance, None)
        if image_embeddings is None:
            pixels = (
                image
                if isinstance(image, torch.Tensor)
                else self.feature_extractor(images=image, return_tensors="pt").pixel_values
            )
            dtype = next(self.image_encoder.parameters()).dtype
            image_embeddings = self.image_encoder(pixels.to(self.device, dtype)).image_embeds
        embeds = image_embeddings.to(self.device).repeat_interleave(num_images_per_prompt, dim=0)
        return self.decode_stages(
            embeds,
            text,
            guidance,
            decoder_guidance_scale,
            decoder_num_inference_steps,
            super_res_num_inference_steps,
            generator,
            decoder_latents,
            super_res_latents,
            output_type,
            return_dict,
        )
