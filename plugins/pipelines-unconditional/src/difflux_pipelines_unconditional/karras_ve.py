"""KarrasVePipeline: the stochastic sampler of Karras et al. 2022 (Algorithm 2) for variance-exploding models."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from difflux.pipeline_utils import StepCallback, step_callback
from difflux_models.unet_2d import UNet2DModel
from difflux_schedulers.karras_ve import KarrasVeOutput, KarrasVeScheduler

from ._base import Generator, ImageOutput, UNetSamplingPipeline

__all__ = ["KarrasVePipeline"]


class KarrasVePipeline(UNetSamplingPipeline):
    """Sample with a UNet trained on pixels in ``[0, 1]`` at noise level ``sigma / 2``: churn, Euler, Heun."""

    scheduler: KarrasVeScheduler

    def __init__(self, unet: UNet2DModel, scheduler: KarrasVeScheduler) -> None:
        super().__init__(unet=unet, scheduler=scheduler)

    def denoiser(self, sample: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The model's output in the scheduler's units: ``sigma/2 * unet((x + 1) / 2, sigma / 2)``."""
        return (sigma / 2) * self.unet((sample + 1) / 2, sigma / 2).sample  # type: ignore[no-any-return]

    def karras_step(self, sample: torch.Tensor, t: int, generator: Generator) -> torch.Tensor:
        """One level down: churn the noise up, an Euler step, and a Heun correction unless at the last level."""
        scheduler = self.scheduler
        if scheduler.schedule is None:
            raise RuntimeError("KarrasVePipeline.karras_step: internal check failed: scheduler.schedule is not None")
        sigma = scheduler.schedule[t]
        sigma_prev = scheduler.schedule[t - 1] if t > 0 else 0
        sample_hat, sigma_hat = scheduler.add_noise_to_input(sample, sigma, generator=generator)
        out = scheduler.step(self.denoiser(sample_hat, sigma_hat), sigma_hat, sigma_prev, sample_hat)
        if not isinstance(out, KarrasVeOutput):
            raise RuntimeError("KarrasVePipeline.karras_step: internal check failed: isinstance(out, KarrasVeOutput)")
        if sigma_prev != 0:
            if out.derivative is None:
                raise RuntimeError("KarrasVePipeline.karras_step: internal check failed: out.derivative is not None")
            out = scheduler.step_correct(
                self.denoiser(out.prev_sample, sigma_prev),
                sigma_hat,
                sigma_prev,
                sample_hat,
                out.prev_sample,
                out.derivative,
            )
            if not isinstance(out, KarrasVeOutput):
                raise RuntimeError(
                    "KarrasVePipeline.karras_step: internal check failed: isinstance(out, KarrasVeOutput)"
                )
        return out.prev_sample

    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 50,
        generator: Generator = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImageOutput:
        """Generate ``batch_size`` images in ``num_inference_steps`` noise levels (two UNet calls each)."""
        self.check_inputs(
            batch_size, generator, output_type, callback_on_step_end_tensor_inputs, latents=latents,
            num_inference_steps=num_inference_steps, callback_on_step_end=callback_on_step_end,
        )
        sample = self.prepare_latents(batch_size, generator, latents)
        self.scheduler.set_timesteps(num_inference_steps)
        self._num_timesteps = len(self.scheduler.timesteps)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            if self._interrupt:
                break
            sample = self.karras_step(sample, int(t), generator)
            if callback_on_step_end is not None:
                state = step_callback(
                    self, callback_on_step_end, i, t, {"latents": sample}, callback_on_step_end_tensor_inputs
                )
                sample = state["latents"]
        return self.output(sample, output_type, return_dict)
