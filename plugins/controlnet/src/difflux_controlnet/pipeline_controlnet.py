"""Stable Diffusion 1.x / 2.x with ControlNet: the SD pipeline plus control residuals from condition images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Denoise, Sampling, StableDiffusionBase, call_arguments
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.images import ImageInput, preprocess_image
from difflux_stable_diffusion.prompts import Prompt, PromptEmbeds, PromptEncoderMixin

from .control import ControlNetSteps, as_controlnet

__all__ = ["SDCallSteps", "StableDiffusionControlNetImg2ImgPipeline", "StableDiffusionControlNetPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None


class SDCallSteps:
    """Mixin: the loop of an SD 1.x / 2.x call (its prompt from ``PromptEncoderMixin.prompt_of``), for the
    ControlNet and T2I-Adapter pipelines."""

    # provided by the SD pipeline this mixes into
    encode_prompt: Any
    guidance_embedding: Any

    def prompt_run(self, steps: torch.Tensor, embeds: PromptEmbeds, opts: Sampling) -> Denoise:
        """The loop over ``steps`` conditioned on the prompt (and on the guidance scale, for a
        guidance-distilled UNet)."""
        cond = self.guidance_embedding(opts.guidance_scale, embeds.embeds.shape[0], embeds.embeds.dtype)
        return Denoise(steps, embeds.for_unet(), opts, timestep_cond=cond)


class _ControlNetSD(PromptEncoderMixin, SDCallSteps, ControlNetSteps, StableDiffusionBase):
    """Components and prompt encoding of the SD 1.x / 2.x ControlNet pipelines."""

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components: ClassVar[tuple[str, ...]] = ("safety_checker", "feature_extractor", "image_encoder")
    _callback_tensor_inputs: tuple[str, ...] = ("latents", "prompt_embeds", "negative_prompt_embeds", "image")

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        controlnet: Any,
        scheduler: Scheduler,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        image_encoder: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__()
        self.warn_about_safety_checker(safety_checker, feature_extractor, requires_safety_checker)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=as_controlnet(controlnet),
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )



class StableDiffusionControlNetPipeline(_ControlNetSD):
    """Text-to-image with Stable Diffusion 1.x / 2.x steered by one or more ControlNets.

    ControlNet: Zhang, Rao and Agrawala, *Adding Conditional Control to Text-to-Image Diffusion
    Models* (2023, arXiv:2302.05543). Each step the ControlNet(s) read the noisy latents, the
    prompt and the condition image and add residuals to the UNet's skip connections and mid block.
    """

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | Sequence[ImageInput] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
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
        controlnet_conditioning_scale: float | Sequence[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Generate images for ``prompt`` that follow the condition ``image``.

        :param image: the condition image (PIL, ``HWC`` array or ``CHW``/``NCHW`` tensor in ``[0, 1]``,
            or a list per prompt); with several ControlNets, a list with one per net. Its size sets
            ``height`` / ``width`` when they are not given.
        :param controlnet_conditioning_scale: multiplies the residuals (a number, or one per net).
        :param guess_mode: the ControlNets see only the prompt-conditioned half and their residuals are
            scaled from 0.1 to 1.0 across the UNet depth (ControlNet's "guess mode"; best with
            ``guidance_scale`` 3-5).
        :param control_guidance_start: the fraction of steps after which the ControlNet(s) start (per net).
        :param control_guidance_end: the fraction of steps after which they stop (per net).

        The other arguments are :class:`~difflux_stable_diffusion.StableDiffusionPipeline`'s.
        Returns ``StableDiffusionPipelineOutput`` (or ``(images, nsfw flags)``).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        a = call_arguments(locals())
        batch = self.check_inputs(Inputs.of(a, image=None))
        control = self.control_args(a, batch)
        height, width = self.control_size(control, height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(a)
        embeds = self.prompt_of(a, opts)
        images = self.control_images(control, height, width, total, num_images_per_prompt, opts.guidance)
        steps = self.schedule(num_inference_steps, timesteps, sigmas)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        run = self.attach_control(self.prompt_run(steps, embeds, opts), control, images, len(steps), total)
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)


class StableDiffusionControlNetImg2ImgPipeline(_ControlNetSD):
    """Image-to-image with Stable Diffusion 1.x / 2.x steered by ControlNet(s): noise ``image`` to
    ``strength``, then denoise with the residuals of ``control_image``."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds", "control_image")
    _control_image_name = "control_image"

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        control_image: ImageInput | Sequence[ImageInput] | None = None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 0.8,
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
        controlnet_conditioning_scale: float | Sequence[float] = 0.8,
        guess_mode: bool = False,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Transform ``image`` guided by ``prompt`` and the condition ``control_image``.

        :param image: the image to start from (PIL, array or tensor; latents pass through).
        :param control_image: the condition image(s), as ``image=`` of
            :class:`StableDiffusionControlNetPipeline` (one per net with several ControlNets).
        :param strength: how much of the schedule runs (1.0: from pure noise).
        :param latents: start from these latents as they are (no image encoding, no noise).
        :param controlnet_conditioning_scale: default 0.8, as in Diffusers.

        The ControlNet arguments are :class:`StableDiffusionControlNetPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        a = call_arguments(locals())
        batch = self.check_inputs(Inputs.of(a, needs_image=True))
        control = self.control_args(a, batch)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(a)
        embeds = self.prompt_of(a, opts)
        if image is None:
            raise RuntimeError("StableDiffusionControlNetImg2ImgPipeline: internal check failed: image is not None")
        pixels = preprocess_image(
            image, height, width, multiple=self.vae_scale_factor, latent_channels=self.vae.config.latent_channels
        )
        c_height, c_width = self.control_size(control, height, width)
        images = self.control_images(control, c_height, c_width, total, num_images_per_prompt, opts.guidance)
        steps = self.schedule(num_inference_steps, strength=strength)
        dtype = embeds.embeds.dtype
        if latents is None:
            latents = self.image_latents(pixels, total, dtype, generator, per_output=True)
            latents = self.add_noise(latents, steps, generator)
        else:
            latents = latents.to(device=self.device, dtype=dtype)
        run = self.attach_control(self.prompt_run(steps, embeds, opts), control, images, len(steps), total)
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)
