"""Stable Diffusion XL with T2I-Adapter(s): SDXL text-to-image plus adapter features inside the UNet's down blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Denoise, Sampling
from difflux_stable_diffusion.images import ImageInput
from difflux_stable_diffusion.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from difflux_stable_diffusion.prompts import Prompt, PromptEmbeds

from .pipeline_adapter import AdapterArgs, AdapterSteps, as_adapter

__all__ = ["StableDiffusionXLAdapterPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None
Size = tuple[int, int]


class StableDiffusionXLAdapterPipeline(AdapterSteps, StableDiffusionXLPipeline):
    """Text-to-image with SDXL steered by one or more T2I-Adapters (``full_adapter_xl`` layouts).

    T2I-Adapter: Mou et al., arXiv:2302.08453. The SDXL text-to-image run of
    :class:`~difflux_stable_diffusion.StableDiffusionXLPipeline` with the adapter features added
    inside the UNet's down blocks for the first ``adapter_conditioning_factor`` of the steps.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _optional_components = (
        "tokenizer",
        "tokenizer_2",
        "text_encoder",
        "text_encoder_2",
        "feature_extractor",
        "image_encoder",
    )
    #: what the current call's adapter run needs, set by ``__call__`` for :meth:`run`
    _adapter_call: tuple[AdapterArgs, int, int, int, int, int | None] | None = None

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        unet: Any,
        adapter: Any,
        scheduler: Scheduler,
        force_zeros_for_empty_prompt: bool = True,
        feature_extractor: Any = None,
        image_encoder: Any = None,
    ) -> None:
        super().__init__(
            vae,
            text_encoder,
            text_encoder_2,
            tokenizer,
            tokenizer_2,
            unet,
            scheduler,
            image_encoder,
            feature_extractor,
            force_zeros_for_empty_prompt,
        )
        self.register_modules(adapter=as_adapter(adapter))

    def run(
        self,
        timesteps: torch.Tensor,
        embeds: PromptEmbeds,
        opts: Sampling,
        time_ids: tuple[torch.Tensor, torch.Tensor],
    ) -> Denoise:
        """The SDXL loop, plus the adapter features for the first ``adapter_conditioning_factor`` of the steps."""
        run = super().run(timesteps, embeds, opts, time_ids)
        call = self._adapter_call
        if call is not None:
            args, height, width, batch, per_prompt, count = call
            states = self.adapter_states(args, height, width, batch, per_prompt, opts.guidance)
            steps = len(timesteps) if count is None else count
            run.control = self.adapter_step(states, int(steps * args.factor))
        return run

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
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        adapter_conditioning_scale: float | Sequence[float] = 1.0,
        adapter_conditioning_factor: float = 1.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt`` (``prompt_2`` for the second text encoder) that follow ``image``.

        :param image: the condition image(s), as in
            :meth:`~difflux_controlnet.StableDiffusionAdapterPipeline.__call__` (one per adapter with a
            MultiAdapter); its size, rounded down to the adapter's downscale factor, sets
            ``height`` / ``width`` when not given.
        :param adapter_conditioning_scale: multiplies the features (a number, or one per adapter).
        :param adapter_conditioning_factor: the fraction of the steps, from the start, that get the
            features (Diffusers' default 1.0: all).

        The other arguments are :class:`~difflux_stable_diffusion.StableDiffusionXLPipeline`'s.
        Returns ``StableDiffusionXLPipelineOutput`` (or ``(images,)``).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        batch = self.check_inputs(self.inputs(locals(), image=None))
        adapter = self.check_adapter(
            image, adapter_conditioning_scale, adapter_conditioning_factor, batch, height, width
        )
        height, width = self.adapter_size(adapter, height, width)
        count = num_inference_steps if timesteps is None and sigmas is None and denoising_end is None else None
        self._adapter_call = (adapter, height, width, batch, num_images_per_prompt, count)
        try:
            return super().__call__(
                prompt=prompt,
                prompt_2=prompt_2,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                timesteps=timesteps,
                sigmas=sigmas,
                denoising_end=denoising_end,
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
                guidance_rescale=guidance_rescale,
                original_size=original_size,
                crops_coords_top_left=crops_coords_top_left,
                target_size=target_size,
                negative_original_size=negative_original_size,
                negative_crops_coords_top_left=negative_crops_coords_top_left,
                negative_target_size=negative_target_size,
                clip_skip=clip_skip,
                callback_on_step_end=callback_on_step_end,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                callback=callback,
                callback_steps=callback_steps,
            )
        finally:
            self._adapter_call = None
