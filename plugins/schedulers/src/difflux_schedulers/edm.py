"""Euler sampler in the EDM formulation (Karras et al. 2022, "Elucidating the Design Space ...", Algorithm 2).

The scheduler owns the EDM preconditioning: ``scale_model_input`` multiplies by ``c_in``, the
timesteps are ``c_noise = log(sigma) / 4``, and ``step`` turns the raw network output into the
denoised sample with ``c_skip`` / ``c_out`` before the Euler step (with optional churn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from difflux.schedulers import SchedulerOutput
from difflux.torch_utils import randn_tensor

from . import schedules
from ._base import BaseScheduler, Generator, custom_array
from .sampling import add_noise_sigma, edm_c_in, edm_scalings, euler_step

__all__ = ["EDMEulerScheduler", "edm_sigmas"]


def edm_sigmas(
    ramp: torch.Tensor,
    schedule: Literal["karras", "exponential"],
    sigma_min: float,
    sigma_max: float,
    rho: float = 7.0,
) -> torch.Tensor:
    """Descending sigmas at ramp positions in [0, 1]: Karras' rho-spacing, or log-uniform (``exponential``,
    computed in float32 over ``len(ramp)`` points as in Diffusers)."""
    if schedule == "karras":
        return schedules.karras_from_ramp(ramp, sigma_min, sigma_max, rho)
    if schedule == "exponential":
        return torch.linspace(math.log(sigma_min), math.log(sigma_max), len(ramp)).exp().flip(0)
    raise ValueError(f"unknown sigma_schedule {schedule!r}; choose 'karras' or 'exponential'")


class EDMEulerScheduler(BaseScheduler):
    """Euler (optionally stochastic, with ``s_churn``) sampling of EDM-preconditioned models.

    ``set_timesteps(sigmas=)`` takes ramp positions in [0, 1] (as Diffusers does), which the
    configured ``sigma_schedule`` maps to noise levels.
    """

    order = 1

    #: a fresh scheduler holds the full training schedule (its per-step tables too): steps work at once
    _steps_on_training_schedule = True

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        sigma_schedule: Literal["karras", "exponential"] = "karras",
        num_train_timesteps: int = 1000,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        rho: float = 7.0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
    ) -> None:
        self.num_inference_steps = None
        self.is_scale_input_called = False
        ramp = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        self._set_sigmas(ramp, device=None)

    @property
    def init_noise_sigma(self) -> float:  # type: ignore[override]
        """Standard deviation of the initial noise: sqrt(sigma_max^2 + 1)."""
        return float((self.config.sigma_max**2 + 1) ** 0.5)

    def precondition_noise(self, sigma: float | torch.Tensor) -> torch.Tensor:
        """The network's noise input c_noise = log(sigma) / 4."""
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor([sigma])
        return 0.25 * torch.log(sigma)

    def precondition_inputs(self, sample: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """``sample * c_in(sigma)``."""
        return sample * edm_c_in(sigma, self.config.sigma_data)

    def precondition_outputs(
        self, sample: torch.Tensor, model_output: torch.Tensor, sigma: float | torch.Tensor
    ) -> torch.Tensor:
        """Denoised sample ``c_skip * sample + c_out * model_output`` (``c_out`` negated for v-prediction)."""
        c_skip, c_out = self._scalings(sigma)
        denoised: torch.Tensor = c_skip * sample + c_out * model_output
        return denoised

    def _scalings(self, sigma: float | torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        c_skip, c_out = edm_scalings(sigma, self.config.sigma_data)
        if self.config.prediction_type == "v_prediction":
            c_out = -c_out
        elif self.config.prediction_type != "epsilon":
            raise ValueError(f"prediction_type {self.config.prediction_type!r} is not supported by EDMEulerScheduler")
        return c_skip, c_out

    def _set_sigmas(self, ramp: torch.Tensor, device: str | torch.device | None) -> None:
        cfg = self.config
        sig = edm_sigmas(ramp, cfg.sigma_schedule, cfg.sigma_min, cfg.sigma_max, cfg.rho)
        sig = sig.to(dtype=torch.float32, device=device)
        self.timesteps = self.precondition_noise(sig)
        last = sig[-1:] if cfg.final_sigmas_type == "sigma_min" else torch.zeros(1, device=sig.device)
        self.sigmas = torch.cat([sig, last]).cpu()
        # Per-index constants of the churn-free step, as exact float32 values (no per-step tensor work).
        self._sigma_list: list[float] = self.sigmas.tolist()
        c_skip, c_out = self._scalings(self.sigmas[:-1])
        self._c_skip: list[float] = c_skip.tolist()  # type: ignore[union-attr]
        self._c_out: list[float] = c_out.tolist()  # type: ignore[union-attr]
        self._c_in: list[float] = edm_c_in(self.sigmas[:-1], cfg.sigma_data).tolist()  # type: ignore[union-attr]
        self._reset_step_state()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """``num_inference_steps`` noise levels from ``sigma_max`` to ``sigma_min``, or the levels at the given
        ramp positions ``sigmas=`` (each in [0, 1])."""
        if timesteps is not None:
            raise ValueError("EDMEulerScheduler.set_timesteps does not take timesteps=; pass num_inference_steps")
        if sigmas is None:
            if num_inference_steps is None:
                raise ValueError("EDMEulerScheduler.set_timesteps: pass num_inference_steps or sigmas=")
            schedules.check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
            ramp = torch.linspace(0, 1, num_inference_steps, dtype=torch.float64)
        else:
            ramp = torch.from_numpy(custom_array(sigmas, "sigmas", "EDMEulerScheduler"))
            if len(ramp) < 1:
                raise ValueError("EDMEulerScheduler.set_timesteps: sigmas= is empty")
        self.num_inference_steps = len(ramp)
        self._set_sigmas(ramp, device)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """Apply ``c_in`` of the current noise level."""
        self._require_timesteps()
        i = self._ensure_step_index(timestep)
        self.is_scale_input_called = True
        return sample * self._c_in[i]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Generator = None,
        return_dict: bool = True,
        pred_original_sample: torch.Tensor | None = None,
        *,
        eta: float = 0.0,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """Euler step to the next noise level; with ``s_churn > 0`` noise is first added to raise the level
        (Algorithm 2, lines 4-6). ``pred_original_sample=`` skips the output preconditioning. ``eta`` is unused."""
        self._require_timesteps()
        self._reject_integer_timestep(timestep)
        i = self._ensure_step_index(timestep)
        sample = sample.to(torch.float32)
        sigma = self._sigma_list[i]
        gamma = min(s_churn / (len(self._sigma_list) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        if gamma > 0:
            sigma_hat_t = self.sigmas[i] * (gamma + 1)
            noise = randn_tensor(
                model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator
            )
            sample = sample + noise * s_noise * (sigma_hat_t**2 - self.sigmas[i] ** 2) ** 0.5
            sigma_hat = float(sigma_hat_t)
            if pred_original_sample is None:
                pred_original_sample = self.precondition_outputs(sample, model_output, sigma_hat_t)
        else:
            sigma_hat = sigma
            if pred_original_sample is None:
                pred_original_sample = torch.add(model_output * self._c_out[i], sample, alpha=self._c_skip[i])
        prev_sample = euler_step(sample, pred_original_sample, sigma_hat, self._sigma_list[i + 1])
        prev_sample = prev_sample.to(model_output.dtype)
        self._step_index = i + 1
        return self._output(prev_sample, pred_original_sample, return_dict)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x0 + sigma(t) * noise`` for ``timesteps`` taken from ``self.timesteps``."""
        return add_noise_sigma(original_samples, noise, self._sigmas_at(timesteps, original_samples))
