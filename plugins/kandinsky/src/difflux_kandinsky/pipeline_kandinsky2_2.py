"""Kandinsky 2.2 decoders: image embeddings to images, from noise or from an image, with or without a depth hint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback, check_finite
from difflux_stable_diffusion._base import Denoise, spread
from difflux_stable_diffusion.images import ImageInput

from ._decoder import Embeds, Generator, KandinskyV22DecoderBase, grow_repaint_region

__all__ = [
    "KandinskyV22ControlnetImg2ImgPipeline",
    "KandinskyV22ControlnetPipeline",
    "KandinskyV22Img2ImgPipeline",
    "KandinskyV22InpaintPipeline",
    "KandinskyV22Pipeline",
    "grow_repaint_region",
]


class KandinskyV22Pipeline(KandinskyV22DecoderBase):
    """Kandinsky 2.2 text-to-image decoder: the image embeddings of :class:`KandinskyV22PriorPipeline` to images.

    Components: ``unet`` (``UNet2DConditionModel`` with ``addition_embed_type="image"``), ``scheduler``
    (``DDPMScheduler``), ``movq`` (``VQModel``).
    """

    def __call__(
        self,
        image_embeds: Embeds,
        negative_image_embeds: Embeds | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Generate images for CLIP image embeddings.

        :param image_embeds: ``(B, D)`` float tensor (or a list of them), ``D`` the UNet's ``encoder_hid_dim``
            (1280 published): the prior's ``image_embeds``.
        :param negative_image_embeds: ``(B, D)`` or ``(1, D)``: the prior's ``negative_image_embeds``; needed
            when ``guidance_scale > 1``.
        :param height: image height in pixels; rounded up to a multiple of ``movq_scale_factor**2`` (64).
        :param width: image width in pixels; rounded the same way.
        :param num_inference_steps: denoising steps.
        :param guidance_scale: classifier-free guidance weight (guides when ``> 1``); the noise half of the
            learned-variance prediction is guided, the conditional variance kept.
        :param num_images_per_prompt: images per embedding.
        :param generator: one generator, or one per image (each image then reproducible alone).
        :param latents: ``(B * num_images_per_prompt, 4, h, w)`` starting noise in latent pixels.
        :param output_type: ``"pil"``, ``"np"`` (``(N, H, W, 3)`` float32 in ``[0, 1]``), ``"pt"``
            (``(N, 3, H, W)`` in ``[0, 1]``; Diffusers gives ``[-1, 1]`` here, unlike its other pipelines)
            or ``"latent"``.
        :param callback_on_step_end: ``fn(pipe, step, timestep, tensors) -> dict`` after each step; it may
            read and replace ``latents``, ``image_embeds``, ``negative_image_embeds``.
        :returns: ``ImagePipelineOutput`` (or ``(images,)``).
        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        begun = self.begin(locals())
        total, opts, embeds, negative, _ = begun
        steps = self.schedule(num_inference_steps)
        start = self.prepare_latents(self.latent_shape(total, height, width), embeds.dtype, generator, latents)
        run = Denoise(steps, embeds, opts, added_cond_kwargs={"image_embeds": embeds})
        return self.output(self.denoise(start, run, negative), output_type, return_dict, generator)


class KandinskyV22Img2ImgPipeline(KandinskyV22DecoderBase):
    """Kandinsky 2.2 image-to-image: ``image`` noised to ``strength``, then denoised towards the image embeddings."""

    def __call__(
        self,
        image_embeds: Embeds,
        image: ImageInput | None = None,
        negative_image_embeds: Embeds | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        strength: float = 0.3,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Transform ``image`` towards the image embeddings.

        :param image: the start image (PIL, ``HWC`` array or ``NCHW`` tensor in ``[0, 1]`` or ``[-1, 1]``, or
            MoVQ latents), resized to ``height`` x ``width`` pixels (bicubic).
        :param strength: the fraction of the schedule that runs (1.0: from pure noise), in whole steps.

        The other arguments are :class:`KandinskyV22Pipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        begun = self.begin(locals())
        self.check_images(image=image)
        total, opts, embeds, negative, _ = begun
        start = self.movq_latents(image, height, width, total, num_images_per_prompt, embeds.dtype, generator)
        steps = self.schedule(num_inference_steps, strength=strength)
        run = Denoise(steps, embeds, opts, added_cond_kwargs={"image_embeds": embeds})
        latents = self.add_noise(start, steps, generator)
        return self.output(self.denoise(latents, run, negative), output_type, return_dict, generator)


class KandinskyV22ControlnetPipeline(KandinskyV22DecoderBase):
    """Kandinsky 2.2 text-to-image steered by a hint image (a depth map for the published ControlNet decoder).

    The UNet (``addition_embed_type="image_hint"``) encodes the hint and adds it to its input.
    """

    def __call__(
        self,
        image_embeds: Embeds,
        negative_image_embeds: Embeds | None = None,
        hint: torch.Tensor | Sequence[torch.Tensor] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Generate images for the embeddings that follow ``hint``.

        :param hint: ``(B, 3, H, W)`` float tensor in ``[0, 1]`` (or a list of them), one per embedding (or one
            for all); ``H x W`` is 8x the latent size, which is the image size for the published MoVQ.

        The other arguments are :class:`KandinskyV22Pipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        begun = self.begin(locals())
        hints = self.check_hint(hint, begun.batch, height, width)
        total, opts, embeds, negative, _ = begun
        steps = self.schedule(num_inference_steps)
        start = self.prepare_latents(self.latent_shape(total, height, width), embeds.dtype, generator, latents)
        run = Denoise(
            steps, embeds, opts, added_cond_kwargs=self.hinted(embeds, hints, num_images_per_prompt, opts.guidance)
        )
        return self.output(self.denoise(start, run, negative), output_type, return_dict, generator)

    #: how many hint pixels one latent pixel spans: the UNet's hint encoder has three stride-2 convolutions
    hint_scale_factor = 8

    def check_hint(
        self, hint: torch.Tensor | Sequence[torch.Tensor] | None, batch: int, height: int, width: int
    ) -> torch.Tensor:
        """``hint`` as one ``(B, 3, H, W)`` tensor; B is 1 or the number of embeddings, ``H x W`` the latent size
        times :attr:`hint_scale_factor` (the image size for the published 8x MoVQ)."""
        name = type(self).__name__
        if isinstance(hint, (list, tuple)) and hint and all(isinstance(h, torch.Tensor) for h in hint):
            hint = torch.cat(list(hint), dim=0)
        if not isinstance(hint, torch.Tensor):
            raise TypeError(f"{name}: hint must be a (batch, 3, height, width) tensor in [0, 1], got {type(hint)}")
        if hint.ndim != 4 or hint.shape[1] != 3:
            raise ValueError(f"{name}: hint must be shaped (batch, 3, height, width), got {tuple(hint.shape)}")
        latent = (
            self.latent_shape(1, height, width)[-2:] if isinstance(height, int) and isinstance(width, int) else None
        )
        if latent is not None:
            size = (latent[0] * self.hint_scale_factor, latent[1] * self.hint_scale_factor)
            if tuple(hint.shape[-2:]) != size:
                raise ValueError(
                    f"{name}: hint is {hint.shape[-2]}x{hint.shape[-1]} pixels; for a {height}x{width} image it must "
                    f"be {size[0]}x{size[1]} ({self.hint_scale_factor}x the {latent[0]}x{latent[1]} latents)"
                )
        if hint.shape[0] not in (1, batch):
            raise ValueError(f"{name}: {hint.shape[0]} hints for {batch} image_embeds; pass 1 or {batch}")
        check_finite(hint, "hint", name)
        return hint

    def hinted(self, embeds: torch.Tensor, hint: torch.Tensor, per_image: int, guidance: bool) -> dict[str, Any]:
        """The UNet's ``added_cond_kwargs``: the embeddings and the hint batched like them (doubled when guiding)."""
        hint = hint.to(self.device, embeds.dtype)
        if hint.shape[0] > 1:
            hint = hint.repeat_interleave(per_image, dim=0)
        hint = spread(hint, embeds.shape[0] // 2 if guidance else embeds.shape[0], "hints")
        return {"image_embeds": embeds, "hint": torch.cat([hint, hint]) if guidance else hint}


class KandinskyV22ControlnetImg2ImgPipeline(KandinskyV22ControlnetPipeline):
    """Kandinsky 2.2 image-to-image steered by a hint image (depth for the published ControlNet decoder)."""

    def __call__(  # type: ignore[override]
        self,
        image_embeds: Embeds,
        image: ImageInput | None = None,
        negative_image_embeds: Embeds | None = None,
        hint: torch.Tensor | Sequence[torch.Tensor] | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        strength: float = 0.3,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Transform ``image`` towards the embeddings, following ``hint``.

        The arguments are :class:`KandinskyV22Img2ImgPipeline`'s plus ``hint``
        (:class:`KandinskyV22ControlnetPipeline`).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        begun = self.begin(locals())
        hints = self.check_hint(hint, begun.batch, height, width)
        self.check_images(image=image)
        total, opts, embeds, negative, _ = begun
        start = self.movq_latents(image, height, width, total, num_images_per_prompt, embeds.dtype, generator)
        steps = self.schedule(num_inference_steps, strength=strength)
        run = Denoise(
            steps, embeds, opts, added_cond_kwargs=self.hinted(embeds, hints, num_images_per_prompt, opts.guidance)
        )
        latents = self.add_noise(start, steps, generator)
        return self.output(self.denoise(latents, run, negative), output_type, return_dict, generator)


class KandinskyV22InpaintPipeline(KandinskyV22DecoderBase):
    """Kandinsky 2.2 inpainting: repaint the white part of ``mask_image`` towards the image embeddings.

    The UNet (9 input channels) sees the latents, the masked image's latents and the keep-mask; after
    every step the kept region is reset to the image's latents noised to the next timestep.
    """

    _callback_tensor_inputs: tuple[str, ...] = (
        "latents",
        "image_embeds",
        "negative_image_embeds",
        "masked_image",
        "mask_image",
    )

    def __call__(
        self,
        image_embeds: Embeds,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        negative_image_embeds: Embeds | None = None,
        height: int = 512,
        width: int = 512,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Inpaint ``image`` where ``mask_image`` is white.

        :param image: the image (PIL, ``HWC`` array or ``NCHW`` tensor), resized to ``height`` x ``width`` pixels.
        :param mask_image: the mask (PIL, ``HW`` array or tensor in ``[0, 1]``): white (>= 0.5) is repainted,
            black kept. At latent size the repainted region grows by one latent pixel, as Kandinsky does.

        The other arguments are :class:`KandinskyV22Pipeline`'s; the callback may also read and replace
        ``masked_image`` and ``mask_image`` (the UNet's extra inputs, doubled when guiding).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        begun = self.begin(locals())
        self.check_images(image=image, mask_image=mask_image)
        total, opts, embeds, negative, _ = begun
        steps = self.schedule(num_inference_steps)
        known, keep = self.inpaint_inputs(image, mask_image, height, width, total, num_images_per_prompt, embeds.dtype)
        start = self.prepare_latents(self.latent_shape(total, height, width), embeds.dtype, generator, latents)
        noise = start.clone()
        run = Denoise(steps, embeds, opts, added_cond_kwargs={"image_embeds": embeds})
        self.inpaint_channels(run, known, keep)
        run.extra["mask"] = keep

        def blend(i: int, current: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
            proper = known if i == len(steps) - 1 else self.scheduler.add_noise(known, noise, steps[i + 1 : i + 2])
            return kept * proper + (1 - kept) * current

        run.blend = blend
        latents = self.denoise(start, run, negative)
        latents = keep * known + (1 - keep) * latents
        return self.output(latents, output_type, return_dict, generator)
