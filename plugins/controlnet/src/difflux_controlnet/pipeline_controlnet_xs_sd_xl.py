"""Stable Diffusion XL with ControlNet-XS: SDXL text-to-image whose UNet is fused with a ControlNet-XS adapter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import StepCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Denoise, Sampling
from difflux_stable_diffusion.images import ImageInput
from difflux_stable_diffusion.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from difflux_stable_diffusion.prompts import Prompt, PromptEmbeds

from .pipeline_controlnet_xs import ControlNetXSSteps, XSArgs, fuse_unet

__all__ = ["StableDiffusionXLControlNetXSPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None
Size = tuple[int, int]


class StableDiffusionXLControlNetXSPipeline(ControlNetXSSteps, StableDiffusionXLPipeline):
    """Text-to-image with SDXL steered by ControlNet-XS (Zavadski et al., arXiv:2312.06573).

    The SDXL text-to-image run of :class:`~difflux_stable_diffusion.StableDiffusionXLPipeline`
    with a fused :class:`~difflux_controlnet.UNetControlNetXSModel`; a plain UNet is fused with
    ``controlnet`` on construction. ``add_watermarker`` is accepted and ignored (no watermark).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2", "feature_extractor")  # type: ignore[assignment]
    #: what the current call's control needs, set by ``__call__`` for :meth:`run`
    _xs_call: tuple[XSArgs, torch.Tensor] | None = None

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
        add_watermarker: bool | None = None,
        feature_extractor: Any = None,
    ) -> None:
        super().__init__(
            vae,
            text_encoder,
            text_encoder_2,
            tokenizer,
            tokenizer_2,
            fuse_unet(unet, controlnet),
            scheduler,
            None,
            feature_extractor,
            force_zeros_for_empty_prompt,
        )
        self._component_names.remove("image_encoder")  # Diffusers' ControlNet-XS SDXL pipeline has none
        self.register_modules(controlnet=controlnet)

    def run(
        self,
        timesteps: torch.Tensor,
        embeds: PromptEmbeds,
        opts: Sampling,
        time_ids: tuple[torch.Tensor, torch.Tensor],
    ) -> Denoise:
        """The SDXL loop with the fused UNet's control inputs at every step (no ``timestep_cond``, as Diffusers)."""
        run = super().run(timesteps, embeds, opts, time_ids)
        call = self._xs_call
        if call is not None:
            run.timestep_cond = None
            run.control = self.xs_step(call[0], call[1], len(timesteps))
        return run

    def latent_shape(self, total: int, height: int, width: int, channels: int | None = None) -> tuple[int, ...]:
        return super().latent_shape(total, height, width, self.unet.in_channels if channels is None else channels)

    def __call__(  # type: ignore[override]
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        image: ImageInput | None = None,
        height: int | None = None,
        width: int | None = None,
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
        controlnet_conditioning_scale: float = 1.0,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt`` (``prompt_2`` for the second text encoder) that follow ``image``.

        The control arguments are :meth:`~difflux_controlnet.StableDiffusionControlNetXSPipeline.__call__`'s,
        the others :class:`~difflux_stable_diffusion.StableDiffusionXLPipeline`'s. ``original_size`` /
        ``target_size`` default to the condition image's size. Returns ``StableDiffusionXLPipelineOutput``
        (or ``(images,)``).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        batch = self.check_inputs(self.inputs(locals(), image=None))
        xs = self.check_xs(image, controlnet_conditioning_scale, control_guidance_start, control_guidance_end, batch)
        guidance = self.uses_guidance(guidance_scale)
        cond_image = self.xs_image(xs, height, width, batch, num_images_per_prompt, guidance)
        height, width = (int(s) for s in cond_image.shape[-2:])
        self._xs_call = (xs, cond_image)
        try:
            return super().__call__(
                prompt=prompt,
                prompt_2=prompt_2,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                negative_prompt=negative_prompt,
                negative_prompt_2=negative_prompt_2,
                num_images_per_prompt=num_images_per_prompt,
                eta=eta,
                generator=generator,
                latents=latents,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                pooled_prompt_embeds=pooled_prompt_embeds,
                negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                output_type=output_type,
                return_dict=return_dict,
                cross_attention_kwargs=cross_attention_kwargs,
                original_size=original_size,
                crops_coords_top_left=crops_coords_top_left,
                target_size=target_size,
                negative_original_size=negative_original_size,
                negative_crops_coords_top_left=negative_crops_coords_top_left,
                negative_target_size=negative_target_size,
                clip_skip=clip_skip,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            )
        finally:
            self._xs_call = None
            self.unet.forget_condition()
