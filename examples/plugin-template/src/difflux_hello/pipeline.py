"""HelloPipeline: unconditional images from HelloDenoiser and a scheduler, in the four usual steps."""

from __future__ import annotations

import torch
from difflux.image import postprocess
from difflux.pipeline import DiffusionPipeline, ImagePipelineOutput
from difflux.pipeline_utils import check_batch, check_output_type, check_steps, prepare_noise
from difflux.schedulers import SchedulerMixin

from .model import HelloDenoiser

__all__ = ["HelloPipeline"]

OUTPUT_TYPES = ("pil", "np", "pt")


class HelloPipeline(DiffusionPipeline):
    """Sample ``batch_size`` images: check -> prepare noise -> denoise -> post-process.

    Components (``model_index.json``): ``denoiser`` (:class:`HelloDenoiser`) and ``scheduler``
    (any scheduler with the usual ``set_timesteps`` / ``scale_model_input`` / ``step``).
    """

    #: the order the models run in, for ``enable_model_cpu_offload`` (every pipeline declares it)
    model_cpu_offload_seq = "denoiser"

    denoiser: HelloDenoiser
    scheduler: SchedulerMixin

    def __init__(self, denoiser: HelloDenoiser, scheduler: SchedulerMixin) -> None:
        super().__init__()
        self.register_modules(denoiser=denoiser, scheduler=scheduler)

    def check_inputs(self, batch_size: int, generator: torch.Generator | None, steps: int, output_type: str) -> None:
        """Refuse bad arguments before any model runs (each error names the argument)."""
        name = type(self).__name__
        check_batch(batch_size, generator)
        check_steps(steps, name)
        check_output_type(output_type, OUTPUT_TYPES, name)

    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | None = None,
        num_inference_steps: int = 20,
        output_type: str = "pil",
    ) -> ImagePipelineOutput:
        """Generate images ``(batch, height, width, channels)`` (``"np"``) or PIL images (``"pil"``).

        :raises ValueError: a bad ``batch_size``, ``num_inference_steps`` or ``output_type``.
        """
        self.check_inputs(batch_size, generator, num_inference_steps, output_type)
        config = self.denoiser.config
        shape = (batch_size, config.channels, config.sample_size, config.sample_size)
        sample = prepare_noise(
            shape,
            generator=generator,
            device=self.device,
            dtype=self.dtype,
            init_noise_sigma=self.scheduler.init_noise_sigma,
        )
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            noise = self.denoiser(self.scheduler.scale_model_input(sample, t), t)
            sample = self.scheduler.step(noise, t, sample).prev_sample
        return ImagePipelineOutput(images=postprocess(sample, output_type))  # type: ignore[arg-type]
