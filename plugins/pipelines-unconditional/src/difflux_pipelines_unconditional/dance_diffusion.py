"""DanceDiffusionPipeline: unconditional audio generation with a 1-D UNet."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import torch
from difflux.pipeline import DiffusionPipeline
from difflux.pipeline_utils import (
    AudioPipelineOutput,
    DenoisingState,
    StepCallback,
    cut_schedule,
    prepare_noise,
    step_callback,
)
from difflux.protocols import Scheduler
from difflux.schedulers import SchedulerMixin
from difflux_models.unet_1d import UNet1DModel

from ._base import Generator, check_inputs, prev_sample

__all__ = ["DanceDiffusionPipeline"]

logger = logging.getLogger("difflux")


class DanceDiffusionPipeline(DenoisingState, DiffusionPipeline):
    """Generate ``audio_length_in_s`` seconds of audio (default: the UNet's ``sample_size`` samples)."""

    _callback_tensor_inputs = ("latents",)
    model_cpu_offload_seq = "unet"

    unet: UNet1DModel
    scheduler: SchedulerMixin

    def __init__(self, unet: UNet1DModel, scheduler: SchedulerMixin) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    def audio_lengths(self, audio_length_in_s: float | None) -> tuple[int, int]:
        """``(samples to generate, samples to keep)``: generated lengths are multiples of the UNet's downscaling."""
        config = self.unet.config
        seconds = audio_length_in_s if audio_length_in_s is not None else config.sample_size / config.sample_rate
        wanted = seconds * config.sample_rate
        factor = 2 ** len(self.unet.up_blocks)
        if wanted < 3 * factor:
            raise ValueError(
                f"DanceDiffusionPipeline: audio_length_in_s={seconds} is too short; this UNet needs at least "
                f"{3 * factor / config.sample_rate} s"
            )
        keep = int(wanted)
        length = keep if wanted % factor == 0 else int((wanted // factor + 1) * factor)
        if length != keep:
            logger.info("DanceDiffusionPipeline: generating %d samples, cut to %d afterwards", length, keep)
        return length, keep

    def __call__(
        self,
        batch_size: int = 1,
        num_inference_steps: int = 100,
        generator: Generator = None,
        audio_length_in_s: float | None = None,
        return_dict: bool = True,
        *,
        output_type: str = "np",
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> AudioPipelineOutput | tuple[Any, ...]:
        """Generate ``batch_size`` waveforms in ``[-1, 1]``; ``output_type`` is ``"np"``, ``"pt"`` or ``"latent"``
        (the denoised sample as a tensor, unclamped and at the generated length, before the cut)."""
        check_inputs(
            self, batch_size, generator, output_type, callback_on_step_end_tensor_inputs,
            output_types=("np", "pt", "latent"), latents=latents, num_inference_steps=num_inference_steps,
            callback_on_step_end=callback_on_step_end,
        )
        self._interrupt = False
        length, keep = self.audio_lengths(audio_length_in_s)
        dtype = next(self.unet.parameters()).dtype
        shape = (batch_size, self.unet.config.in_channels, length)
        audio = prepare_noise(shape, generator=generator, device=self.device, dtype=dtype, latents=latents)
        audio = self.denoise(
            audio, num_inference_steps, dtype, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        if output_type == "latent":
            return AudioPipelineOutput(audios=audio) if return_dict else (audio,)
        audio = audio.clamp(-1, 1).float()[:, :, :keep]
        audios: Any = audio.cpu().numpy() if output_type == "np" else audio
        rate = int(self.unet.config.sample_rate)
        return AudioPipelineOutput(audios=audios, sample_rate=rate) if return_dict else (audios,)

    def denoise(
        self,
        audio: torch.Tensor,
        num_inference_steps: int,
        dtype: torch.dtype,
        callback: StepCallback | None,
        callback_inputs: Sequence[str],
    ) -> torch.Tensor:
        scheduler = cast(Scheduler, self.scheduler)
        scheduler.set_timesteps(num_inference_steps, device=audio.device)
        timesteps = cut_schedule(scheduler, pipeline=type(self).__name__).timesteps.to(dtype)
        self._num_timesteps = len(timesteps)
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self._interrupt:
                break
            audio = prev_sample(scheduler.step(self.unet(audio, t).sample, t, audio))
            if callback is not None:
                audio = step_callback(self, callback, i, t, {"latents": audio}, callback_inputs)["latents"]
        return audio
