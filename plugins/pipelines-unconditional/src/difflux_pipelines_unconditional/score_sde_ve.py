"""ScoreSdeVePipeline: predictor-corrector sampling of a variance-exploding score SDE (Song et al. 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difflux.image import postprocess
from difflux.pipeline import ImagePipelineOutput
from difflux.pipeline_utils import StepCallback, prepare_noise, sample_shape, step_callback
from difflux_models.unet_2d import UNet2DModel
from difflux_schedulers.score_sde_ve import ScoreSdeVeScheduler, SdeVeOutput

from ._base import Generator, ImageOutput, UNetSamplingPipeline, prev_sample

__all__ = ["ScoreSdeVePipeline"]


class ScoreSdeVePipeline(UNetSamplingPipeline):
    """Sample with a score UNet: ``correct_steps`` Langevin corrections, then one reverse-SDE prediction per level.

    The UNet works on pixel values in ``[0, 1]``; the output is the last predictor mean.
    """

    scheduler: ScoreSdeVeScheduler

    def __init__(self, unet: UNet2DModel, scheduler: ScoreSdeVeScheduler) -> None:
        super().__init__(unet=unet, scheduler=scheduler)

    def prepare_latents(
        self, batch_size: int, generator: Generator, latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        config = self.unet.config
        shape = sample_shape(batch_size, config.in_channels, config.sample_size)
        return prepare_noise(
            shape,
            generator=generator,
            device=self.device,
            dtype=torch.float32,
            init_noise_sigma=self.scheduler.init_noise_sigma,
            latents=latents,
        ).to(self.unet.dtype)

    def score(self, sample: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, sigma).sample  # type: ignore[no-any-return]

    def denoise_sde(
        self,
        sample: torch.Tensor,
        num_inference_steps: int,
        generator: Generator,
        callback: StepCallback | None,
        callback_inputs: Sequence[str],
    ) -> torch.Tensor:
        """Predictor-corrector sampling; returns the noise-free mean of the last prediction."""
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps)
        self._num_timesteps = len(scheduler.timesteps)
        mean = sample
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            if self._interrupt:
                break
            sigma = scheduler.sigmas[i] * torch.ones(sample.shape[0], device=self.device)
            for _ in range(scheduler.config.correct_steps):
                sample = prev_sample(scheduler.step_correct(self.score(sample, sigma), sample, generator=generator))
            output = scheduler.step_pred(self.score(sample, sigma), t, sample, generator=generator)
            if not isinstance(output, SdeVeOutput):
                raise RuntimeError(
                    "ScoreSdeVePipeline.denoise_sde: internal check failed: isinstance(output, SdeVeOutput)"
                )
            if not (
                output.prev_sample_mean is not None
            ):
                raise RuntimeError(
                    "ScoreSdeVePipeline.denoise_sde: internal check failed: output.prev_sample_mean is not None"
                )
            sample, mean = output.prev_sample, output.prev_sample_mean
            if callback is not None:
                state = step_callback(self, callback, i, t, {"latents": sample}, callback_inputs)
                sample = state["latents"]
        return mean

    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 2000,
        generator: Generator = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImageOutput:
        """Generate ``batch_size`` images with ``num_inference_steps`` predictor steps."""
        self.check_inputs(
            batch_size, generator, output_type, callback_on_step_end_tensor_inputs, latents=latents,
            num_inference_steps=num_inference_steps, callback_on_step_end=callback_on_step_end,
        )
        sample = self.prepare_latents(batch_size, generator, latents)
        mean = self.denoise_sde(
            sample, num_inference_steps, generator, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        if output_type == "latent":  # the last predictor mean, unclamped
            images: Any = mean
        else:
            images = postprocess(mean.clamp(0, 1), output_type, do_denormalize=False)  # type: ignore[arg-type]
        return ImagePipelineOutput(images=images) if return_dict else (images,)
