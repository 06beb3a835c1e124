"""Stable Diffusion XL with T2I-Adapter(s): SDXL text-to-image plus adapter features inside the UNet's down blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Denoise, call_arguments
from difflux_stable_diffusion.images import ImageInput
from difflux_stable_diffusion.pipeline_stable_diffusion_xl import Attach, StableDiffusionXLPipeline
from difflux_stable_diffusion.prompts import Prompt

from .pipeline_adapter import AdapterSteps, as_adapter

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

    def steering(self, a: dict[str, Any], batch: int) -> tuple[Size, Attach]:
        """Check the adapter arguments of call ``a``; the run's size (given, else the condition image's
        rounded down to the adapter's downscale factor) and the adapter features for the first
        ``adapter_conditioning_factor`` of the steps."""
        height, width = a["height"], a["width"]
        adapter = self.check_adapter(
            a["image"], a["adapter_conditioning_scale"], a["adapter_conditioning_factor"], batch, height, width
        )
        height, width = self.default_size(*self.adapter_size(adapter, height, width))
        per_prompt, count = a["num_images_per_prompt"], a["num_inference_steps"]
        if a["timesteps"] is not None or a["sigmas"] is not None or a["denoising_end"] is not None:
            count = None  # the run's own length

        def attach(run: Denoise, length: int) -> Denoise:
            states = self.adapter_states(adapter, height, width, batch, per_prompt, run.sampling.guidance)
            steps = len(run.timesteps) if count is None else count
            run.control = self.adapter_step(states, int(steps * adapter.factor))
            return run

        return (height, width), attach

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
        return self.txt2img(call_arguments(locals()))
