"""DDPMPipeline: ancestral sampling of a pixel-space UNet (Ho et al. 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from difflux.pipeline_utils import StepCallback

from ._base import Generator, ImageOutput, Labels, UNetSamplingPipeline

__all__ = ["DDPMPipeline"]


class DDPMPipeline(UNetSamplingPipeline):
    """Sample images with a UNet and any scheduler (DDPM by default: 1000 stochastic steps).

    ``class_labels`` (one int, or one per image) drives a class-conditional UNet.
    """

    def __call__(
        self,
        batch_size: int = 1,
        generator: Generator = None,
        num_inference_steps: int = 1000,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        class_labels: Labels = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImageOutput:
        """Generate ``batch_size`` images; ``output_type`` is ``"pil"``, ``"np"`` or ``"pt"``."""
        return self.sample(
            batch_size=batch_size,
            generator=generator,
            num_inference_steps=num_inference_steps,
            class_labels=class_labels,
            latents=latents,
            output_type=output_type,
            return_dict=return_dict,
            step_options={"generator": generator},
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
