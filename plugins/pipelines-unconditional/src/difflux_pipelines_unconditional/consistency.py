"""ConsistencyModelPipeline: one-step or multistep sampling of a consistency model (Song et al. 2023)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from difflux.pipeline_utils import StepCallback
from difflux_models.unet_2d import UNet2DModel
from difflux_schedulers.consistency import CMStochasticIterativeScheduler

from ._base import Generator, ImageOutput, Labels, UNetSamplingPipeline

__all__ = ["ConsistencyModelPipeline"]


class ConsistencyModelPipeline(UNetSamplingPipeline):
    """Sample with a consistency-model UNet: one step (the default) or several (``timesteps=[...]``).

    A class-conditional UNet takes ``class_labels``; without them, labels are drawn at random
    from torch's global generator, as Diffusers does.
    """

    scheduler: CMStochasticIterativeScheduler

    def __init__(self, unet: UNet2DModel, scheduler: CMStochasticIterativeScheduler) -> None:
        super().__init__(unet=unet, scheduler=scheduler)

    def prepare_class_labels(self, class_labels: Labels, batch_size: int) -> torch.Tensor | None:
        classes = self.unet.config.get("num_class_embeds")
        if class_labels is None and classes is not None:
            class_labels = torch.randint(0, classes, size=(batch_size,))
        return super().prepare_class_labels(class_labels, batch_size)

    def __call__(
        self,
        batch_size: int = 1,
        class_labels: Labels = None,
        num_inference_steps: int = 1,
        timesteps: Sequence[int] | None = None,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImageOutput:
        """Generate ``batch_size`` images; custom ``timesteps`` (descending) win over ``num_inference_steps``."""
        if num_inference_steps is None and timesteps is None:
            raise ValueError("ConsistencyModelPipeline: pass num_inference_steps or timesteps")
        return self.sample(
            batch_size=batch_size,
            generator=generator,
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            class_labels=class_labels,
            latents=latents,
            output_type=output_type,
            return_dict=return_dict,
            step_options={"generator": generator},
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
