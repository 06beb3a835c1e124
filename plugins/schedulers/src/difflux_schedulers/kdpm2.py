"""DPM-Solver-2 in k-diffusion form, plain and ancestral (k-diffusion ``sample_dpm_2``, ``_ancestral``)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput

from . import sampling, schedules
from ._base import KARRAS_COMPATIBLES, Generator, SigmaScheduler, TrainedBetas
from .heun import interleave_twice
from .sampling import PredictionType
from .schedules import TimestepSpacing

__all__ = ["KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler"]


def log_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Geometric mean of two sigma ramps: the midpoint in log-sigma."""
    return a.log().lerp(b.log(), 0.5).exp()


class _KDPM2Base(SigmaScheduler, abc.ABC):
    """Shared schedule: each step evaluates the model at sigma and at the log-midpoint sigma_interpol."""

    _compatibles: ClassVar[tuple[str, ...]] = KARRAS_COMPATIBLES
    order: ClassVar[int] = 2
    sigmas_interpol: torch.Tensor

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
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
        self.sample: torch.Tensor | None = None
        # As Diffusers: a fresh scheduler holds the full interleaved training schedule (steps work at once).
        self.set_timesteps(num_train_timesteps)

    @property
    def state_in_first_order(self) -> bool:
        """Whether the next ``step`` is the first (midpoint) half of a step."""
        return self.sample is None

    def _model_input_sigma(self, step_index: int) -> torch.Tensor:
        return self.sigmas[step_index] if self.state_in_first_order else self.sigmas_interpol[step_index]

    def _saved_sample(self) -> torch.Tensor:
        """The sample saved by the first call of this step (the second call restarts from it)."""
        if self.sample is None:
            raise RuntimeError(f"{type(self).__name__}: the second call of a step came before its first call")
        return self.sample

    @abc.abstractmethod
    def _interpolated(self, sigmas: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The midpoint sigmas for this variant (index-aligned with ``sigmas``) and extra per-step tables."""

    #: which slice of the midpoint timesteps sits between the full steps
    _interp_slice: ClassVar[slice] = slice(1, -1)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Set ``num_inference_steps`` steps; the timesteps interleave full steps and midpoints."""
        self._check_set_timesteps_args(
            num_inference_steps, timesteps, sigmas, accepts_timesteps=False, accepts_sigmas=False
        )
        num_inference_steps = self._required_steps(type(self).__name__, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        ts, sig, log_sigmas = self._spaced_sigmas(num_inference_steps)
        if self.config.use_karras_sigmas:
            ts = np.round(ts)
        sigmas_t = schedules.with_final_sigma(sig).to(device=device)
        interpol, extra = self._interpolated(sigmas_t)
        self.sigmas = interleave_twice(sigmas_t, repeat_last=True, append_last=True).to("cpu")
        self.sigmas_interpol = interleave_twice(interpol, repeat_last=True, append_last=True)
        for name, table in extra.items():
            setattr(self, name, interleave_twice(table, repeat_last=True, append_last=True))
        full = torch.from_numpy(np.asarray(ts)).to(device)
        mid = schedules.sigma_to_t_torch(interpol.cpu(), torch.from_numpy(log_sigmas))
        mid_t = mid.to(device, dtype=full.dtype)
        interleaved = torch.stack((mid_t[self._interp_slice, None], full[1:, None]), dim=-1).flatten()
        self.timesteps = torch.cat([full[:1], interleaved])
        self.sample = None
        self._reset_step_state()


class KDPM2DiscreteScheduler(_KDPM2Base):
    """DPM-Solver-2: an Euler half-step to the log-midpoint, then a full step with the midpoint slope."""

    def _interpolated(self, sigmas: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return log_midpoint(sigmas, sigmas.roll(1)), {}

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
        """First call: step to the midpoint; second call: the full step from the saved sample."""
        self._require_timesteps()
        index = self._ensure_step_index(timestep)
        first = self.state_in_first_order
        if first:
            sigma, sigma_mid, sigma_next = self.sigmas[index], self.sigmas_interpol[index + 1], self.sigmas[index + 1]
        else:
            sigma, sigma_mid, sigma_next = self.sigmas[index - 1], self.sigmas_interpol[index], self.sigmas[index]
        sigma_input = sigma if first else sigma_mid
        denoised = sampling.denoised_from_sigma(model_output, sample, sigma_input, self.config.prediction_type)
        if first:
            derivative = sampling.to_d(sample, sigma, denoised)
            dt = sigma_mid - sigma
            self.sample = sample
        else:
            derivative = sampling.to_d(sample, sigma_mid, denoised)
            dt = sigma_next - sigma
            sample, self.sample = self._saved_sample(), None
        self._step_index = index + 1
        return self._output(derivative.mul_(dt).add_(sample), denoised, return_dict)


class KDPM2AncestralDiscreteScheduler(_KDPM2Base):
    """Ancestral DPM-Solver-2: the full step goes to sigma_down, then noise of std sigma_up is added."""

    sigmas_up: torch.Tensor
    sigmas_down: torch.Tensor
    _interp_slice: ClassVar[slice] = slice(None, -2)

    def _interpolated(self, sigmas: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sigmas_next = sigmas.roll(-1)
        sigmas_next[-1] = 0.0
        sigmas_up, sigmas_down = sampling.get_ancestral_step(sigmas, sigmas_next)
        sigmas_down[-1] = 0.0
        # Where sigma_down rounds to 0 before the end (a huge first sigma, e.g. a cosine schedule), take its
        # exact value sigma_next^2 / sigma for the midpoint: log(0) would make it NaN (Diffusers gives NaN).
        exact_down = sigmas_next**2 / sigmas
        interpol = log_midpoint(sigmas, torch.where((sigmas_down > 0) | (exact_down == 0), sigmas_down, exact_down))
        interpol[-2:] = 0.0
        return interpol, {"sigmas_up": sigmas_up, "sigmas_down": sigmas_down}

    def _model_input_sigma(self, step_index: int) -> torch.Tensor:
        return self.sigmas[step_index] if self.state_in_first_order else self.sigmas_interpol[step_index - 1]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """First call: step to the midpoint; second call: full step to sigma_down plus noise from ``generator``."""
        self._require_timesteps()
        index = self._ensure_step_index(timestep)
        first = self.state_in_first_order
        if first:
            sigma, sigma_mid = self.sigmas[index], self.sigmas_interpol[index]
            sigma_up, sigma_down = self.sigmas_up[index], self.sigmas_down[index - 1]
        else:
            sigma, sigma_mid = self.sigmas[index - 1], self.sigmas_interpol[index - 1]
            sigma_up, sigma_down = self.sigmas_up[index - 1], self.sigmas_down[index - 1]
        sigma_input = sigma if first else sigma_mid
        denoised = sampling.denoised_from_sigma(model_output, sample, sigma_input, self.config.prediction_type)
        if first:
            prev_sample = sampling.to_d(sample, sigma, denoised).mul_(sigma_mid - sigma).add_(sample)
            self.sample = sample
        else:
            derivative = sampling.to_d(sample, sigma_mid, denoised)
            sample, self.sample = self._saved_sample(), None
            prev_sample = derivative.mul_(sigma_down - sigma).add_(sample)
            prev_sample.add_(sampling.noise_like(model_output, generator) * sigma_up)
        self._step_index = index + 1
        return self._output(prev_sample, denoised, return_dict)
