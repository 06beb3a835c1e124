"""Stable Diffusion XL with ControlNet-XS: SDXL text-to-image whose UNet is fused with a ControlNet-XS adapter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import StepCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Denoise, call_arguments
from difflux_stable_diffusion.images import ImageInput
from difflux_stable_diffusion.pipeline_stable_diffusion_xl import Attach, StableDiffusionXLPipeline
from difflux_stable_diffusion.prompts import Prompt

from .controlnet_xs import UNetControlNetXSModel
from .pipeline_controlnet_xs import ControlNetXSSteps, fuse_unet

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

    def steering(self, a: dict[str, Any], batch: int) -> tuple[Size, Attach]:
        """Check the control arguments of call ``a``; the run's size (the condition image's, prepared at the
        given or its own size) and the fused UNet's control inputs at every step (no ``timestep_cond``,
        as Diffusers)."""
        scale, start, end = a["controlnet_conditioning_scale"], a["control_guidance_start"], a["control_guidance_end"]
        xs = self.check_xs(a["image"], scale, start, end, batch)
        guidance = self.uses_guidance(a["guidance_scale"])
        image = self.xs_image(xs, a["height"], a["width"], batch, a["num_images_per_prompt"], guidance)
        height, width = (int(s) for s in image.shape[-2:])

        def attach(run: Denoise, length: int) -> Denoise:
            run.timestep_cond = None
            run.control = self.xs_step(xs, image, len(run.timesteps))
            return run

        return self.default_size(height, width), attach

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
        try:
            return self.txt2img(call_arguments(locals()))
        finally:
            if isinstance(self.unet, UNetControlNetXSModel):
                self.unet.forget_condition()
