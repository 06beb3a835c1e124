"""Stable Diffusion XL with ControlNet: text-to-image, image-to-image and inpainting.

Each pipeline is the SDXL pipeline of ``difflux_stable_diffusion`` (prompt encoding with both text
encoders, micro-conditioning, the shared denoising loop) plus the control residuals of
:class:`~difflux_controlnet.control.ControlNetSteps`. SDXL ControlNets take the UNet's added
conditioning (pooled text embedding and time ids) as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from difflux_stable_diffusion._base import Denoise, call_arguments
from difflux_stable_diffusion.images import ImageInput, default_size, preprocess_image
from difflux_stable_diffusion.pipeline_stable_diffusion_xl import Attach
from difflux_stable_diffusion.prompts import Prompt

from .control import ControlArgs, ControlNetSteps, as_controlnet
from .pipeline_controlnet_inpaint import InpaintStart

__all__ = [
    "StableDiffusionXLControlNetImg2ImgPipeline",
    "StableDiffusionXLControlNetInpaintPipeline",
    "StableDiffusionXLControlNetPipeline",
]

Generator = torch.Generator | Sequence[torch.Generator] | None
Size = tuple[int, int]
_SDXL_TENSORS = StableDiffusionXLPipeline._callback_tensor_inputs


class SDXLControlSteps(ControlNetSteps):
    """Mixin: the ControlNet part every SDXL ControlNet pipeline shares (check, condition images, residuals).

    A call's arguments travel as ``a``, the ``__call__``'s ``locals()``; the SDXL pipeline this mixes
    into runs the call (options, prompt, schedule: ``sampling_of``, ``prompt_of``, ``schedule_of``).
    Union pipelines override :meth:`control_args` and :meth:`attach_control`.
    """

    @staticmethod
    def wrap_controlnet(controlnet: Any) -> Any:
        """The ``controlnet`` component as given (a list of nets becomes a :class:`MultiControlNetModel`)."""
        return as_controlnet(controlnet)

    def steering(self, a: dict[str, Any], batch: int) -> tuple[Size, Attach]:
        """Check the ControlNet arguments of text-to-image call ``a``; the run's size (given, else the
        first condition image's) and the residuals for its loop."""
        control = self.control_args(a, batch)
        size = self.control_size(control, a["height"], a["width"])
        return size, self.control_attach(control, size, batch, a["num_images_per_prompt"])

    def control_attach(self, control: ControlArgs, size: Size, batch: int, per_prompt: int) -> Attach:
        """``attach(run, length)``: the condition images at ``size`` and the residuals on a loop ``run``
        (:meth:`attach_control`); ``length`` is what the guidance windows are fractions of."""
        total = batch * per_prompt

        def attach(run: Denoise, length: int) -> Denoise:
            images = self.control_images(control, *size, total, per_prompt, run.sampling.guidance)
            return self.attach_control(run, control, images, length, total)

        return attach


class SDXLImageControlSteps(SDXLControlSteps):
    """Mixin: :class:`SDXLControlSteps` with the constructor of the SDXL ControlNet pipelines built on
    image-to-image (img2img and inpainting: the refiner's ``requires_aesthetics_score``)."""

    register_modules: Any

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        unet: Any,
        controlnet: Any,
        scheduler: Scheduler,
        requires_aesthetics_score: bool = False,
        force_zeros_for_empty_prompt: bool = True,
        feature_extractor: Any = None,
        image_encoder: Any = None,
    ) -> None:
        super().__init__(  # type: ignore[call-arg]
            vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
            image_encoder, feature_extractor, requires_aesthetics_score, force_zeros_for_empty_prompt,
        )  # fmt: skip
        self.register_modules(controlnet=self.wrap_controlnet(controlnet))


class StableDiffusionXLControlNetPipeline(SDXLControlSteps, StableDiffusionXLPipeline):
    """Text-to-image with SDXL steered by one or more ControlNets (SDXL layout: ``addition_embed_type="text_time"``).

    ControlNet: Zhang, Rao and Agrawala, *Adding Conditional Control to Text-to-Image Diffusion Models*
    (2023, arXiv:2302.05543).
    """

    _callback_tensor_inputs = (*_SDXL_TENSORS, "image")

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        unet: Any,
        controlnet: Any,
        scheduler: Scheduler,
        force_zeros_for_empty_prompt: bool = True,
        feature_extractor: Any = None,
        image_encoder: Any = None,
    ) -> None:
        super().__init__(
            vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
            image_encoder, feature_extractor, force_zeros_for_empty_prompt,
        )  # fmt: skip
        self.register_modules(controlnet=self.wrap_controlnet(controlnet))

    def __call__(  # type: ignore[override]
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        image: ImageInput | Sequence[ImageInput] | None = None,
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
        controlnet_conditioning_scale: float | Sequence[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
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
        """Generate images for ``prompt`` that follow the condition ``image``.

        :param image: the condition image (PIL, ``HWC`` array or ``CHW``/``NCHW`` tensor in ``[0, 1]``, or
            a list per prompt); with several ControlNets a list with one per net. Its size sets
            ``height`` / ``width`` (and the default ``original_size`` / ``target_size``) when not given.
        :param controlnet_conditioning_scale: multiplies the residuals (a number, or one per net).
        :param guess_mode: the ControlNets see only the prompt-conditioned half; residuals scaled 0.1 .. 1.0
            across depth.
        :param control_guidance_start: / :param control_guidance_end: the fraction of the steps (of the
            whole schedule, before a ``denoising_end`` cut) during which each net acts.

        The other arguments are :class:`~difflux_stable_diffusion.StableDiffusionXLPipeline`'s. Returns
        ``StableDiffusionXLPipelineOutput`` (or ``(images,)``).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        return self.txt2img(call_arguments(locals()))


class StableDiffusionXLControlNetImg2ImgPipeline(SDXLImageControlSteps, StableDiffusionXLImg2ImgPipeline):
    """Image-to-image with SDXL steered by ControlNet(s): noise ``image`` to ``strength``, then denoise with
    the residuals of ``control_image``."""

    _callback_tensor_inputs = (*_SDXL_TENSORS, "control_image")
    _control_image_name = "control_image"

    def __call__(  # type: ignore[override]
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        image: ImageInput | None = None,
        control_image: ImageInput | Sequence[ImageInput] | None = None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
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
        controlnet_conditioning_scale: float | Sequence[float] = 0.8,
        guess_mode: bool = False,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
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
        """Transform ``image`` guided by ``prompt`` and the condition ``control_image``.

        :param image: the image to start from (resized to ``height`` x ``width`` when given; latents pass through).
        :param control_image: the condition image(s), one per net with several ControlNets; its size
            sets the default ``original_size`` / ``target_size``.
        :param strength: how much of the schedule runs (1.0: from pure noise).
        :param latents: start from these latents as they are (no image encoding, no noise).
        :param controlnet_conditioning_scale: default 0.8, as in Diffusers.

        The ControlNet arguments are :class:`StableDiffusionXLControlNetPipeline`'s, the rest
        :class:`~difflux_stable_diffusion.StableDiffusionXLImg2ImgPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        return self.img2img(call_arguments(locals()))

    def img2img(self, a: dict[str, Any]) -> Any:
        """The body of ``__call__`` (shared with the Union pipeline): ``a`` holds the call's arguments."""
        batch = self.check_inputs(self.inputs(a, needs_image=True))
        control = self.control_args(a, batch)
        per_prompt = a["num_images_per_prompt"]
        total = batch * per_prompt
        steps, windows = self.schedule_of(a, strength=a["strength"])
        opts = self.sampling_of(a)
        embeds = self.prompt_of(a, opts)
        latent_channels = self.vae.config.latent_channels
        pixels = preprocess_image(a["image"], a["height"], a["width"], multiple=self.vae_scale_factor,
                                  latent_channels=latent_channels)  # fmt: skip
        size = self.control_size(control, a["height"], a["width"])
        latents = a["latents"]
        if latents is None:
            latents = self.image_latents(pixels, total, embeds.embeds.dtype, a["generator"], per_output=True)
            latents = self.add_noise(latents, steps, a["generator"])
        else:
            latents = latents.to(device=self.device, dtype=embeds.embeds.dtype)
        ids = self.micro_conditioning(
            embeds, size, a["original_size"], a["crops_coords_top_left"], a["target_size"], a["aesthetic_score"],
            a["negative_aesthetic_score"], a["negative_original_size"], a["negative_crops_coords_top_left"],
            a["negative_target_size"],
        )  # fmt: skip
        run = self.control_attach(control, size, batch, per_prompt)(self.run(steps, embeds, opts, ids), windows)
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, a["output_type"], a["return_dict"])


class StableDiffusionXLControlNetInpaintPipeline(
    InpaintStart, SDXLImageControlSteps, StableDiffusionXLInpaintPipeline
):
    """Inpainting with SDXL steered by ControlNet(s): repaint where ``mask_image`` is white, following
    ``control_image``; a 9-channel inpainting UNet or a 4-channel UNet with the known region blended back."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _callback_tensor_inputs = (*_SDXL_TENSORS, "mask", "masked_image_latents", "control_image")
    _control_image_name = "control_image"

    def __call__(  # type: ignore[override]
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        control_image: ImageInput | Sequence[ImageInput] | None = None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 0.9999,
        num_inference_steps: int = 50,
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
        controlnet_conditioning_scale: float | Sequence[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
        guidance_rescale: float = 0.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Repaint the masked part of ``image`` guided by ``prompt`` and the condition ``control_image``.

        :param image: the image to repaint; its size sets ``height`` / ``width`` when not given.
        :param mask_image: white (1) where to repaint, black (0) where to keep.
        :param control_image: the condition image(s), resized to ``height`` x ``width``; one per net with
            several ControlNets.
        :param denoising_start: / :param denoising_end: take over from, or hand over to, another SDXL run
            (fractions of the schedule, as in :class:`~difflux_stable_diffusion.StableDiffusionXLInpaintPipeline`).

        The ControlNet arguments are :class:`StableDiffusionXLControlNetPipeline`'s, the rest
        :class:`~difflux_stable_diffusion.StableDiffusionXLInpaintPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        return self.inpaint(call_arguments(locals()))

    def inpaint(self, a: dict[str, Any]) -> Any:
        """The body of ``__call__`` (shared with the Union pipeline): ``a`` holds the call's arguments."""
        batch = self.check_inputs(self.inputs(a, needs_image=True, needs_mask=True))
        control = self.control_args(a, batch)
        self.inpaint_blending()  # a UNet that cannot inpaint fails here, before any model runs
        size = default_size(a["image"], a["height"], a["width"], self.vae_scale_factor)
        per_prompt = a["num_images_per_prompt"]
        total = batch * per_prompt
        start = a["denoising_start"]
        steps, windows = self.schedule_of(a, strength=a["strength"], denoising_start=start,
                                          denoising_end=a["denoising_end"])  # fmt: skip
        opts = self.sampling_of(a)
        embeds = self.prompt_of(a, opts)
        latents, attach = self.inpaint_start(
            a["image"], a["mask_image"], size, steps, a["strength"], total, embeds.embeds.dtype, a["generator"],
            a["latents"], opts.guidance, add_noise=start is None,
        )  # fmt: skip
        crops = a["crops_coords_top_left"]
        ids = self.micro_conditioning(embeds, size, a["original_size"], crops, a["target_size"], a["aesthetic_score"],
                                      a["negative_aesthetic_score"], None, crops, None)  # fmt: skip
        run = self.control_attach(control, size, batch, per_prompt)(attach(self.run(steps, embeds, opts, ids)), windows)
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, a["output_type"], a["return_dict"])
