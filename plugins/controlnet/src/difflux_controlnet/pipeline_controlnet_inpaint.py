"""Stable Diffusion 1.x / 2.x inpainting steered by ControlNet(s): the SD inpainting steps plus control residuals."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux_stable_diffusion._base import Denoise, call_arguments
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.images import ImageInput, default_size, preprocess_image, preprocess_mask
from difflux_stable_diffusion.prompts import Prompt

from .pipeline_controlnet import _ControlNetSD

__all__ = ["InpaintStart", "StableDiffusionControlNetInpaintPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None


class InpaintStart:
    """Mixin for ``StableDiffusionBase`` pipelines: the starting latents and mask conditioning of inpainting.

    The pieces are the base's (``inpaint_latents``, ``mask_latents``, ``inpaint_run``); this strings them
    together once for the ControlNet inpainting pipelines (SD and SDXL, plain and Union).
    """

    vae: Any
    vae_scale_factor: int
    inpaint_blending: Callable[[], bool]
    latent_shape: Callable[..., tuple[int, ...]]
    inpaint_latents: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
    mask_latents: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    inpaint_run: Callable[..., Denoise]

    def inpaint_start(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        size: tuple[int, int],
        steps: torch.Tensor,
        strength: float,
        total: int,
        dtype: torch.dtype,
        generator: Generator,
        latents: torch.Tensor | None,
        guidance: bool,
        *,
        masked_image_latents: torch.Tensor | None = None,
        add_noise: bool = True,
    ) -> tuple[torch.Tensor, Callable[[Denoise], Denoise]]:
        """``(starting latents, attach)``: ``attach(run)`` conditions a loop run on the mask.

        ``image`` and ``mask_image`` are resized to ``size`` (``(height, width)`` in pixels). A 9-channel
        UNet sees the mask and the masked image's latents; a 4-channel one gets the known region
        blended back after every step.
        """
        blending = self.inpaint_blending()
        height, width = size
        pixels = preprocess_image(image, height, width, multiple=self.vae_scale_factor).to(dtype)
        shape = self.latent_shape(total, height, width, self.vae.config.latent_channels)
        start, noise, image_latents = self.inpaint_latents(
            pixels, shape, steps, strength, generator, latents, blending=blending, add_noise=add_noise
        )
        mask = preprocess_mask(mask_image, height, width, multiple=self.vae_scale_factor)
        masked = masked_image_latents if masked_image_latents is not None else pixels * (mask < 0.5)
        mask, masked_latents = self.mask_latents(mask, masked, total, dtype, generator, guidance)

        def attach(run: Denoise) -> Denoise:
            return self.inpaint_run(run, mask, masked_latents, image_latents, noise, blending=blending)

        return start, attach


class StableDiffusionControlNetInpaintPipeline(InpaintStart, _ControlNetSD):
    """Inpainting with Stable Diffusion 1.x / 2.x steered by ControlNet(s): repaint where ``mask_image`` is
    white, following the condition ``control_image``.

    Works with a 9-channel inpainting UNet (it sees the mask and the masked image) or a plain
    4-channel UNet (the known region is blended back after every step). The ControlNet sees the
    4-channel latents. For the SD 1.5 inpainting ControlNet, pass a ``control_image`` whose masked
    pixels are set to -1 (see the docs).
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _callback_tensor_inputs = (
        "latents",
        "prompt_embeds",
        "negative_prompt_embeds",
        "control_image",
        "mask",
        "masked_image_latents",
    )
    _control_image_name = "control_image"

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        control_image: ImageInput | Sequence[ImageInput] | None = None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 1.0,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | Sequence[float] = 0.5,
        guess_mode: bool = False,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Repaint the masked part of ``image`` guided by ``prompt`` and the condition ``control_image``.

        :param image: the image to repaint (PIL, ``HWC`` array or ``CHW``/``NCHW`` tensor); its size sets
            ``height`` / ``width`` when they are not given (rounded down to a multiple of 8).
        :param mask_image: white (1) where to repaint, black (0) where to keep; thresholded at 0.5.
        :param control_image: the condition image(s), as ``image=`` of
            :class:`~difflux_controlnet.StableDiffusionControlNetPipeline` (one per net with several
            ControlNets); resized to ``height`` x ``width``.
        :param strength: how much of the schedule runs; 1.0 starts from pure noise.
        :param controlnet_conditioning_scale: default 0.5, as in Diffusers.

        The other ControlNet arguments are :class:`~difflux_controlnet.StableDiffusionControlNetPipeline`'s,
        the rest :class:`~difflux_stable_diffusion.StableDiffusionInpaintPipeline`'s. Returns
        ``StableDiffusionPipelineOutput`` (or ``(images, nsfw flags)``).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        a = call_arguments(locals())
        batch = self.check_inputs(Inputs.of(a, needs_image=True, needs_mask=True))
        control = self.control_args(a, batch)
        self.inpaint_blending()  # a UNet that cannot inpaint fails here, before any model runs
        if image is None or mask_image is None:
            raise RuntimeError("StableDiffusionControlNetInpaintPipeline: internal check failed: image and mask")
        height, width = default_size(image, height, width, self.vae_scale_factor)
        total = batch * num_images_per_prompt
        steps = self.schedule(num_inference_steps, strength=strength)  # a strength that leaves no step fails here
        opts = self.sampling_of(a)
        embeds = self.prompt_of(a, opts)
        images = self.control_images(control, height, width, total, num_images_per_prompt, opts.guidance)
        dtype = embeds.embeds.dtype
        latents, attach = self.inpaint_start(
            image, mask_image, (height, width), steps, strength, total, dtype, generator, latents, opts.guidance
        )
        run = self.attach_control(attach(Denoise(steps, embeds.for_unet(), opts)), control, images, len(steps), total)
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)
