"""PNDMPipeline: pseudo numerical methods for diffusion models (Liu et al. 2022), in pixel space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from difflux.pipeline_utils import StepCallback
from difflux.schedulers import SchedulerMixin
from difflux_models.unet_2d import UNet2DModel
from difflux_schedulers.pndm import PNDMScheduler

from ._base import Generator, ImageOutput, Labels, UNetSamplingPipeline

__all__ = ["PNDMPipeline"]


class PNDMPipeline(UNetSamplingPipeline):
    """Sample images with a UNet and a PNDM scheduler (another scheduler's config is converted to PNDM)."""

    scheduler: PNDMScheduler

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin) -> None:
        if not isinstance(scheduler, PNDMScheduler):
            scheduler = PNDMScheduler.from_config(scheduler.config)
        super().__init__(unet=unet, scheduler=scheduler)

    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: Generator = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        class_labels: Labels = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImageOutput:
        """Generate ``batch_size`` images with the deterministic PNDM/PLMS sampler."""
        return self.sample(
            batch_size=batch_size,
            generator=generator,
            num_inference_steps=num_inference_steps,
            class_labels=class_labels,
            latents=latents,
            output_type=output_type,
            return_dict=return_dict,
            step_options={},
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
