"""LDMPipeline: unconditional latent diffusion (Rombach et al. 2022) with a VQ-VAE decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from difflux.pipeline_utils import StepCallback
from difflux.schedulers import SchedulerMixin
from difflux_models.unet_2d import UNet2DModel
from difflux_models.vq_model import VQModel

from ._base import Generator, ImageOutput, UNetSamplingPipeline

__all__ = ["LDMPipeline"]


class LDMPipeline(UNetSamplingPipeline):
    """Denoise latents with ``unet`` and ``scheduler``, then decode them with the VQ-VAE ``vqvae``."""

    model_cpu_offload_seq = "unet->vqvae"

    vqvae: VQModel

    def __init__(self, vqvae: VQModel, unet: UNet2DModel, scheduler: SchedulerMixin) -> None:
        super().__init__(unet=unet, scheduler=scheduler)
        self.register_modules(vqvae=vqvae)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images in ``[-1, 1]`` through the VQ-VAE decoder (quantizing first)."""
        latents = latents / self.vqvae.config.scaling_factor
        return self.vqvae.decode(latents, return_dict=False)[0]

    def __call__(
        self,
        batch_size: int = 1,
        generator: Generator = None,
        eta: float = 0.0,
        num_inference_steps: int = 50,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImageOutput:
        """Generate ``batch_size`` images; ``output_type="latent"`` skips the decoder."""
        return self.sample(
            batch_size=batch_size,
            generator=generator,
            num_inference_steps=num_inference_steps,
            class_labels=None,
            latents=latents,
            output_type=output_type,
            return_dict=return_dict,
            step_options={"eta": eta, "generator": generator},
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
