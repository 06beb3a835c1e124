"""Heun's second-order sampler of the probability-flow ODE (Karras et al. 2022, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput

from . import sampling, schedules
from ._base import KARRAS_COMPATIBLES, Generator, SigmaScheduler, TrainedBetas, custom_array
from .sampling import PredictionType
from .schedules import TimestepSpacing

__all__ = ["HeunDiscreteScheduler"]


def interleave_twice(values: torch.Tensor, *, repeat_last: bool = False, append_last: bool = False) -> torch.Tensor:
    """[v0, v1, v1, v2, v2, ...]: each entry after the first twice (two model calls per step).

    The last entry is repeated too when ``repeat_last``, and appended once more when ``append_last``.
    """
    inner = values[1:] if repeat_last else values[1:-1]
    parts = [values[:1], inner.repeat_interleave(2)]
    if append_last:
        parts.append(values[-1:])
    return torch.cat(parts)


class HeunDiscreteScheduler(SigmaScheduler):
    """Heun steps: an Euler predictor, then the trapezoidal corrector (two model evaluations per step)."""

    _compatibles: ClassVar[tuple[str, ...]] = KARRAS_COMPATIBLES
    order: ClassVar[int] = 2

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "exp"] = "linear",
        trained_betas: TrainedBetas = None,
        prediction_type: PredictionType = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._init_training_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self._init_sigmas()
        self._clear_state()
        # As Diffusers: a fresh scheduler holds the full interleaved training schedule (steps work at once).
        self.set_timesteps(num_train_timesteps)

    def _clear_state(self) -> None:
        self.prev_derivative: torch.Tensor | None = None
        self.dt: torch.Tensor | None = None
        self.sample: torch.Tensor | None = None

    @property
    def state_in_first_order(self) -> bool:
        """Whether the next ``step`` is the predictor (else the corrector)."""
        return self.dt is None

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Set ``num_inference_steps`` steps (or custom ``timesteps``); each inner timestep appears twice."""
        self._check_set_timesteps_args(num_inference_steps, timesteps, sigmas, accepts_sigmas=False)
        custom = None
        if timesteps is not None:
            self._check_custom_timesteps_allowed()
            custom = custom_array(timesteps, "timesteps", type(self).__name__).astype(np.float32)
            num_inference_steps = len(custom)
        num_inference_steps = self._required_steps(type(self).__name__, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        ts, sig, _ = self._spaced_sigmas(num_inference_steps, custom)
        sigmas_t = schedules.with_final_sigma(sig).to(device=device)
        self.sigmas = interleave_twice(sigmas_t, append_last=True).to("cpu")
        self.timesteps = interleave_twice(torch.from_numpy(np.asarray(ts)), repeat_last=True).to(
            device=device, dtype=torch.float32
        )
        self._clear_state()
        self._reset_step_state()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
        generator: Generator = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """Predictor (first call per step) or corrector (second call); deterministic."""
        self._require_timesteps()
        index = self._ensure_step_index(timestep)
        first = self.state_in_first_order
        sigma, sigma_next = (
            (self.sigmas[index], self.sigmas[index + 1])
            if first
            else (
                self.sigmas[index - 1],
                self.sigmas[index],
            )
        )
        sigma_input = sigma if first else sigma_next
        denoised = sampling.denoised_from_sigma(model_output, sample, sigma_input, self.config.prediction_type)
        if self.config.clip_sample:
            denoised = denoised.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        if first:
            derivative = sampling.to_d(sample, sigma, denoised)
            dt = sigma_next - sigma
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
        else:
            if self.prev_derivative is None or self.dt is None or self.sample is None:
                raise RuntimeError("HeunDiscreteScheduler: the corrector call came before its predictor call")
            derivative = (self.prev_derivative + sampling.to_d(sample, sigma_next, denoised)) / 2
            dt, sample = self.dt, self.sample
            self._clear_state()
        prev_sample = sample + derivative * dt
        self._step_index = index + 1
        return self._output(prev_sample, denoised, return_dict)
