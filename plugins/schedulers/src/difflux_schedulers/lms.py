"""Linear multistep sampler in sigma (k-diffusion ``sample_lms``)."""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput

from . import sampling
from ._base import KARRAS_COMPATIBLES, Generator, SigmaScheduler, TrainedBetas
from .sampling import PredictionType
from .schedules import TimestepSpacing

__all__ = ["LMSDiscreteScheduler"]


class LMSDiscreteScheduler(SigmaScheduler):
    """Adams-Bashforth style multistep in sigma, on the last ``order`` derivatives (up to 4)."""

    _compatibles: ClassVar[tuple[str, ...]] = KARRAS_COMPATIBLES
    order: ClassVar[int] = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        trained_betas: TrainedBetas = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: PredictionType = "epsilon",
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._init_training_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self._init_sigmas()
        self.timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy())
        self.derivatives: list[torch.Tensor] = []

    def _on_new_schedule(self) -> None:
        self.derivatives = []

    def get_lms_coefficient(self, order: int, t: int, current_order: int) -> float:
        """The multistep weight of derivative ``current_order`` steps back, at step ``t``."""
        return sampling.lms_coefficient(self.sigmas.numpy(), t, order, current_order)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        order: int = 4,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
        generator: Generator = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One linear multistep step of ``order`` (fewer during warm-up); deterministic."""
        self._require_timesteps()
        index = self._ensure_step_index(timestep)
        sigma = self.sigmas[index]
        denoised = sampling.denoised_from_sigma(model_output, sample, sigma, self.config.prediction_type)
        self.derivatives.append(sampling.to_d(sample, sigma, denoised))
        if len(self.derivatives) > order:
            self.derivatives.pop(0)
        order = min(index + 1, order)
        coeffs = [self.get_lms_coefficient(order, index, k) for k in range(order)]
        prev_sample = sample + sum(c * d for c, d in zip(coeffs, reversed(self.derivatives)))
        self._step_index = index + 1
        return self._output(prev_sample, denoised, return_dict)
