"""What the guidance pipelines share on top of the SD base: the components, and the run set-up (loop options
and prompt embeddings from a call's arguments; the same steps the SD pipelines spell out, kept here until
the SD base offers them)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from difflux_schedulers.sampling import predict_x0_eps_vp
from difflux_stable_diffusion.pipeline_stable_diffusion import StableDiffusionComponents

__all__ = ["GuidedStableDiffusion"]


class GuidedStableDiffusion(StableDiffusionComponents):
    """SD 1.x / 2.x components (``vae, text_encoder, tokenizer, unet, scheduler``, optional safety
    checker and feature extractor) with the scheduler used as given, as Diffusers' guidance pipelines do."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: ClassVar[tuple[str, ...]] = ("safety_checker", "feature_extractor")
    _scheduler_fixes: tuple[str, ...] | None = None

    def integer_timesteps(self, steps: torch.Tensor) -> None:
        """Refuse schedulers with fractional timesteps (the method indexes ``alphas_cumprod`` by timestep).

        :raises ValueError: naming the scheduler and ones that work.
        """
        if steps.dtype not in (torch.int16, torch.int32, torch.int64) or not hasattr(self.scheduler, "alphas_cumprod"):
            raise ValueError(
                f"{type(self).__name__} does not support {type(self.scheduler).__name__} (its timesteps are not "
                "integer indices into alphas_cumprod); use DDIMScheduler, PNDMScheduler, DDPMScheduler, "
                "DEISMultistepScheduler, UniPCMultistepScheduler or a DPM-Solver scheduler"
            )

    def x0_and_eps(self, sample: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor) -> tuple[Any, Any]:
        """``(predicted clean latents, predicted noise)`` of ``model_output`` at integer timestep ``t``
        (by the scheduler's ``prediction_type``; DDPM eq. 15)."""
        alpha = self.scheduler.alphas_cumprod[t].to(sample.device)
        return predict_x0_eps_vp(model_output, sample, alpha, self.scheduler.config.prediction_type)
