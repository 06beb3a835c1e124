"""Stable Diffusion XL: text-to-image, image-to-image (and refiner), inpainting; SDXL Turbo runs through them too.

SDXL conditions the UNet on two text encoders, a pooled text embedding and "micro-conditioning"
time ids (original size, crop corner, target size, or an aesthetic score for the refiner).
A base model can stop early (``denoising_end``, ``output_type="latent"``) and hand its latents
to the refiner (``StableDiffusionXLImg2ImgPipeline(..., denoising_start=...)``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler

from ._base import Denoise, Sampling, StableDiffusionBase, call_arguments
from ._common import StableDiffusionXLPipelineOutput
from .checks import Inputs
from .images import ImageInput, preprocess_image, preprocess_mask
from .prompts import Prompt, PromptEmbeds, encode_prompt_sdxl

__all__ = [
    "StableDiffusionXLBase",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
    "StableDiffusionXLPipeline",
]

Generator = torch.Generator | Sequence[torch.Generator] | None
Size = tuple[int, int]
#: ``attach(run, length) -> run``: steers a text-to-image run (control residuals, adapter features);
#: ``length``: the steps of the schedule before a ``denoising_end`` cut
Attach = Callable[[Denoise, int], Denoise]


def _unsteered(run: Denoise, length: int) -> Denoise:
    return run


class _StableDiffusionXL(StableDiffusionBase):
    """Components, prompt encoding and micro-conditioning of the SDXL pipelines."""

    _upcast_vae = True
    _vae_latent_stats = True
    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _callback_tensor_inputs: tuple[str, ...] = (
        "latents",
        "prompt_embeds",
        "negative_prompt_embeds",
        "add_text_embeds",
        "add_time_ids",
        "negative_pooled_prompt_embeds",
        "negative_add_time_ids",
    )
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

    def _projection_dim(self, embeds: PromptEmbeds) -> int:
        if self.text_encoder_2 is not None:
            return int(self.text_encoder_2.config.projection_dim)
        if embeds.pooled is None:
            raise RuntimeError("_StableDiffusionXL._projection_dim: internal check failed: embeds.pooled is not None")
        return int(embeds.pooled.shape[-1])

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

    def inputs(self, arguments: dict[str, Any], **flags: Any) -> Inputs:
        """The validator's view of an SDXL call's ``locals()`` (pooled embeddings required with embeddings)."""
        return Inputs.of(arguments, pooled=True, **flags)

    # -- the steps of a call, read from its arguments ``a`` (:func:`~._base.call_arguments`) ----------

    def prompt_of(self, a: dict[str, Any], opts: Sampling) -> PromptEmbeds:
        """The prompt embeddings of call ``a`` (:meth:`encode_prompt`)."""
        return self.encode_prompt(
            a["prompt"],
            guidance=opts.guidance,
            num_images_per_prompt=a["num_images_per_prompt"],
            prompt_2=a["prompt_2"],
            negative_prompt=a["negative_prompt"],
            negative_prompt_2=a["negative_prompt_2"],
            prompt_embeds=a["prompt_embeds"],
            negative_prompt_embeds=a["negative_prompt_embeds"],
            pooled_prompt_embeds=a["pooled_prompt_embeds"],
            negative_pooled_prompt_embeds=a["negative_pooled_prompt_embeds"],
            clip_skip=a["clip_skip"],
        )

    def schedule_of(self, a: dict[str, Any], **cut: Any) -> tuple[torch.Tensor, int]:
        """``(timesteps of the run, length of the schedule before a denoising_end cut)`` of call ``a``.

        ``cut``: :meth:`schedule`'s ``strength`` / ``denoising_start`` / ``denoising_end``. The length is
        what ControlNet's guidance windows are fractions of (as in Diffusers).

        :raises ValueError: when the cut leaves no denoising step.
        """
        end = cut.pop("denoising_end", None)
        n, times, sigmas = a["num_inference_steps"], a.get("timesteps"), a.get("sigmas")
        steps = self.schedule(n, times, sigmas, **cut)
        length = len(steps)
        if end is not None:
            steps = self.schedule(n, times, sigmas, denoising_end=end, **cut)
        return steps, length

    def size_time_ids(self, a: dict[str, Any], embeds: PromptEmbeds, size: Size) -> tuple[torch.Tensor, torch.Tensor]:
        """``(time ids, negative time ids)`` of text-to-image call ``a``: original size, crop corner, target size.

        The sizes default to ``size``; the negative ids are the positive ones unless both
        ``negative_original_size`` and ``negative_target_size`` are given.
        """
        proj, dtype = self._projection_dim(embeds), embeds.embeds.dtype
        ids = self.time_ids([*(a["original_size"] or size), *a["crops_coords_top_left"], *(a["target_size"] or size)],
                            proj, dtype)  # fmt: skip
        if a["negative_original_size"] is None or a["negative_target_size"] is None:
            return ids, ids
        negative = [*a["negative_original_size"], *a["negative_crops_coords_top_left"], *a["negative_target_size"]]
        return ids, self.time_ids(negative, proj, dtype)

    def run(
        self,
        timesteps: torch.Tensor,
        embeds: PromptEmbeds,
        opts: Sampling,
        time_ids: tuple[torch.Tensor, torch.Tensor],
    ) -> Denoise:
        """The loop over ``timesteps``, conditioned on the prompt, pooled embeddings and time ids."""
        total = embeds.embeds.shape[0]
        return Denoise(
            timesteps,
            embeds.for_unet(),
            opts,
            timestep_cond=self.guidance_embedding(opts.guidance_scale, total, embeds.embeds.dtype),
            added_cond_kwargs=self._conditioning(embeds, *time_ids, total),
        )

    def wrap_output(self, images: Any, flags: list[bool] | None, return_dict: bool) -> Any:
        return StableDiffusionXLPipelineOutput(images=images) if return_dict else (images,)


#: the SDXL components, prompt encoding and micro-conditioning, for families built on SDXL (InstructPix2Pix)
StableDiffusionXLBase = _StableDiffusionXL


class StableDiffusionXLPipeline(_StableDiffusionXL):
    """Text-to-image with SDXL (and SDXL Turbo: ``guidance_scale=0.0``, 1-4 steps)."""

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
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Generate images for ``prompt`` (``prompt_2`` for the second text encoder)."""
        return self.txt2img(call_arguments(locals()))

    def txt2img(self, a: dict[str, Any]) -> Any:
        """The text-to-image run of call ``a`` (a ``__call__``'s arguments by name).

        check → size and steering (:meth:`steering`) → schedule → options → prompt → latents →
        micro-conditioning → denoise → decode. Pipelines that steer SDXL text-to-image (ControlNet,
        Union ControlNet, T2I-Adapter, ControlNet-XS) override :meth:`steering` and keep this run.
        """
        batch = self.check_inputs(self.inputs(a, image=None))
        (height, width), attach = self.steering(a, batch)
        total = batch * a["num_images_per_prompt"]
        steps, length = self.schedule_of(a, denoising_end=a.get("denoising_end"))  # a cut leaving no step fails here
        opts = self.sampling_of(a)
        embeds = self.prompt_of(a, opts)
        shape = self.latent_shape(total, height, width)
        latents = self.prepare_latents(shape, embeds.embeds.dtype, a["generator"], a["latents"])
        run = attach(self.run(steps, embeds, opts, self.size_time_ids(a, embeds, (height, width))), length)
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, a["output_type"], a["return_dict"])

    def steering(self, a: dict[str, Any], batch: int) -> tuple[Size, Attach]:
        """``((height, width), attach)`` of call ``a`` with ``batch`` prompts: the run's size, and what
        steers its loop (here: the given or default size, no steering).

        Runs after the inputs are checked and before any model: a steered pipeline checks its own
        arguments here.

        :raises ValueError: when height or width is not a multiple of 8.
        """
        return self.default_size(a["height"], a["width"]), _unsteered


class StableDiffusionXLImg2ImgPipeline(_StableDiffusionXL):
    """Image-to-image with SDXL; as the refiner, it takes over a base model's latents at ``denoising_start``."""

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
        super().__init__(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                         image_encoder, feature_extractor, force_zeros_for_empty_prompt)

    def micro_conditioning(
        self,
        embeds: PromptEmbeds,
        size: Size,
        original_size: Size | None,
        crops: Size,
        target_size: Size | None,
        aesthetic_score: float,
        negative_aesthetic_score: float,
        negative_original_size: Size | None,
        negative_crops: Size,
        negative_target_size: Size | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(time ids, negative time ids)``: sizes and crop, or sizes and aesthetic score for a refiner.

        Sizes default to ``size``, the negative ones to the positive ones.
        """
        original_size = original_size or size
        target_size = target_size or size
        negative_original_size = negative_original_size or original_size
        negative_target_size = negative_target_size or target_size
        if self.config.get("requires_aesthetics_score", False):
            pos = [*original_size, *crops, aesthetic_score]
            neg = [*negative_original_size, *negative_crops, negative_aesthetic_score]
        else:
            pos = [*original_size, *crops, *target_size]
            neg = [*negative_original_size, *crops, *negative_target_size]
        proj, dtype = self._projection_dim(embeds), embeds.embeds.dtype
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
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Transform ``image`` (pixels, or a base model's latents when refining) guided by ``prompt``."""
        a = call_arguments(locals())
        total = self.check_inputs(self.inputs(a, needs_image=True)) * num_images_per_prompt
        opts = self.sampling_of(a)
        embeds = self.prompt_of(a, opts)
        pixels = self.image_input(image)
        steps = self.schedule(num_inference_steps, timesteps, sigmas, strength=strength,
                              denoising_start=denoising_start, denoising_end=denoising_end)
        if latents is None:
            latents = self.image_latents(pixels, total, embeds.embeds.dtype, generator, per_output=True)
            if denoising_start is None:  # a refiner gets latents that are already noisy
                latents = self.add_noise(latents, steps, generator)
        height, width = (s * self.vae_scale_factor for s in latents.shape[-2:])
        ids = self.micro_conditioning(embeds, (height, width), original_size, crops_coords_top_left, target_size,
                                      aesthetic_score, negative_aesthetic_score, negative_original_size,
                                      negative_crops_coords_top_left, negative_target_size)
        latents = self.denoise(latents, self.run(steps, embeds, opts, ids), embeds.negative)
        return self.output(latents, output_type, return_dict)


class StableDiffusionXLInpaintPipeline(StableDiffusionXLImg2ImgPipeline):
    """Inpainting with SDXL: a 9-channel inpainting UNet, or a 4-channel UNet with the known region blended back."""

    _callback_tensor_inputs = (*_StableDiffusionXL._callback_tensor_inputs, "mask", "masked_image_latents")

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
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Repaint where ``mask_image`` is white."""
        a = call_arguments(locals())
        total = self.check_inputs(self.inputs(a, needs_image=True, needs_mask=True)) * num_images_per_prompt
        height, width = self.default_size(height, width)
        blending = self.inpaint_blending()
        opts = self.sampling_of(a)
        embeds = self.prompt_of(a, opts)
        steps = self.schedule(num_inference_steps, timesteps, sigmas, strength=strength,
                              denoising_start=denoising_start, denoising_end=denoising_end)
        dtype = embeds.embeds.dtype
        if not (image is not None and mask_image is not None):
            raise RuntimeError(
                "StableDiffusionXLInpaintPipeline.__call__: internal check failed: "
                "image is not None and mask_image is not None"
            )
        pixels = preprocess_image(image, height, width, multiple=self.vae_scale_factor).to(dtype)
        shape = self.latent_shape(total, height, width, self.vae.config.latent_channels)
        latents, noise, image_latents = self.inpaint_latents(
            pixels, shape, steps, strength, generator, latents, blending=blending, add_noise=denoising_start is None
        )
        mask = preprocess_mask(mask_image, height, width, multiple=self.vae_scale_factor)
        masked = masked_image_latents if masked_image_latents is not None else pixels * (mask < 0.5)
        mask, masked_latents = self.mask_latents(mask, masked, total, dtype, generator, opts.guidance)
        ids = self.micro_conditioning(embeds, (height, width), original_size, crops_coords_top_left, target_size,
                                      aesthetic_score, negative_aesthetic_score, negative_original_size,
                                      negative_crops_coords_top_left, negative_target_size)
        run = self.run(steps, embeds, opts, ids)
        run = self.inpaint_run(run, mask, masked_latents, image_latents, noise, blending=blending)
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict)
