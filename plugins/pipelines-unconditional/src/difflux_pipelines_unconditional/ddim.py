"""DDIMPipeline: deterministic (or ``eta``-noisy) implicit sampling of a pixel-space UNet (Song et al. 2021)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import StepCallback
from difflux.schedulers import SchedulerMixin
from difflux_models.unet_2d import UNet2DModel
from difflux_schedulers.ddim import DDIMScheduler

from ._base import Generator, ImageOutput, Labels, UNetSamplingPipeline

__all__ = ["DDIMPipeline"]

logger = logging.getLogger("difflux")


class DDIMPipeline(UNetSamplingPipeline):
    """Sample images with a UNet and a DDIM scheduler (another scheduler's config is converted to DDIM).

    ``class_labels`` (one int, or one per image) drives a class-conditional UNet.
    """

    scheduler: DDIMScheduler

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin) -> None:
        if not isinstance(scheduler, DDIMScheduler):
            scheduler = DDIMScheduler.from_config(scheduler.config)
        super().__init__(unet=unet, scheduler=scheduler)

    def step_options(self, eta: float, use_clipped_model_output: bool | None, generator: Generator) -> dict[str, Any]:
        """``scheduler.step`` options; ``use_clipped_model_output`` only when set (DDIM's own option, so a
        scheduler swapped in later, e.g. by ``difflux generate --scheduler``, still gets a valid call)."""
        options: dict[str, Any] = {"eta": eta, "generator": generator}
        if use_clipped_model_output is not None:
            options["use_clipped_model_output"] = use_clipped_model_output
        return options

    def __call__(
        self,
        batch_size: int = 1,
        generator: Generator = None,
        eta: float = 0.0,
        num_inference_steps: int = 50,
        use_clipped_model_output: bool | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        class_labels: Labels = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImageOutput:
        """Generate ``batch_size`` images; ``eta=0`` is deterministic DDIM, ``eta=1`` DDPM-like noise."""
        if not 0.0 <= eta <= 1.0:
            logger.warning("DDIMPipeline: eta=%s lies outside [0, 1] (0 is DDIM, 1 is DDPM-like)", eta)
        return self.sample(
            batch_size=batch_size,
            generator=generator,
            num_inference_steps=num_inference_steps,
            class_labels=class_labels,
            latents=latents,
            output_type=output_type,
            return_dict=return_dict,
            step_options=self.step_options(eta, use_clipped_model_output, generator),
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
