"""Stochastic second-order sampler for variance-exploding models (Karras et al. 2022, Algorithm 2).

The full sampler is driven by the pipeline in three calls per timestep, as in Diffusers:
``add_noise_to_input`` (churn: raise the noise level from sigma to sigma_hat), ``step`` (Euler
predictor to sigma_prev) and, unless sigma_prev is 0, ``step_correct`` (Heun correction).
``schedule[t]`` is the noise level of timestep ``t``; its values follow Diffusers exactly:
``sigma_max^2 (sigma_min^2 / sigma_max^2)^(i / (n - 1))``.

For the common scheduler protocol, ``step(model_output, t, sample)`` with ``t`` from ``timesteps``
is the churn-free Euler step from ``schedule[t]`` to ``schedule[t - 1]`` (0 after ``t = 0``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from difflux.schedulers import SchedulerOutput
from difflux.torch_utils import randn_tensor

from . import schedules
from ._base import BaseScheduler, Generator
from .sampling import add_noise_sigma

__all__ = ["KarrasVeOutput", "KarrasVeScheduler", "karras_ve_euler", "karras_ve_heun"]


@dataclasses.dataclass
class KarrasVeOutput(SchedulerOutput):
    """``prev_sample``, the predicted clean sample and the ODE ``derivative`` used (``out["derivative"]``)."""

    derivative: torch.Tensor | None = None


def karras_ve_euler(
    model_output: torch.Tensor,
    sigma_hat: float | torch.Tensor,
    sigma_prev: float | torch.Tensor,
    sample_hat: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Euler step from sigma_hat to sigma_prev (Algorithm 2, lines 7-8); returns (x_prev, d, x0)."""
    x0 = sample_hat + sigma_hat * model_output
    derivative = (sample_hat - x0) / sigma_hat
    return sample_hat + (sigma_prev - sigma_hat) * derivative, derivative, x0


def karras_ve_heun(
    model_output: torch.Tensor,
    sigma_hat: float | torch.Tensor,
    sigma_prev: float | torch.Tensor,
    sample_hat: torch.Tensor,
    sample_prev: torch.Tensor,
    derivative: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Second-order correction with the derivative at sigma_prev (Algorithm 2, lines 9-11); returns (x_prev, x0)."""
    x0 = sample_prev + sigma_prev * model_output
    derivative_corr = (sample_prev - x0) / sigma_prev
    return sample_hat + (sigma_prev - sigma_hat) * (0.5 * derivative + 0.5 * derivative_corr), x0


class KarrasVeScheduler(BaseScheduler):
    """Karras et al.'s stochastic sampler (churn + Heun) for variance-exploding models.

    Diffusers keeps this scheduler among its deprecated ones; the API is the same here.
    """

    order = 2

    def __init__(
        self,
        sigma_min: float = 0.02,
        sigma_max: float = 100,
        s_noise: float = 1.007,
        s_churn: float = 80,
        s_min: float = 0.05,
        s_max: float = 50,
    ) -> None:
        self.init_noise_sigma = sigma_max
        self.num_inference_steps = None
        self.timesteps = torch.empty(0, dtype=torch.int64)
        self.schedule: torch.Tensor | None = None
        self._levels: list[float] = []

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Timesteps ``n - 1 .. 0`` and their noise levels ``schedule``."""
        if timesteps is not None or sigmas is not None:
            raise ValueError("KarrasVeScheduler.set_timesteps takes neither timesteps= nor sigmas=")
        if num_inference_steps is None:
            raise ValueError("KarrasVeScheduler.set_timesteps: pass num_inference_steps")
        schedules.check_num_inference_steps(num_inference_steps)
        if num_inference_steps < 2:
            raise ValueError(f"KarrasVeScheduler needs num_inference_steps >= 2, got {num_inference_steps}")
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.int64, device=device)
        # Same float32 arithmetic as Diffusers: python float ** float32 tensor, one level at a time.
        ratio = cfg.sigma_min**2 / cfg.sigma_max**2
        steps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.int64)
        levels = [cfg.sigma_max**2 * ratio ** (i / (num_inference_steps - 1)) for i in steps]
        self.schedule = torch.tensor(levels, dtype=torch.float32, device=device)
        self._levels = self.schedule.tolist()
        self._reset_step_state()

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The model takes the sample unscaled."""
        return sample

    def add_noise_to_input(
        self, sample: torch.Tensor, sigma: float | torch.Tensor, generator: Generator = None
    ) -> tuple[torch.Tensor, float | torch.Tensor]:
        """Churn: raise the noise level from ``sigma`` to ``sigma_hat = (1 + gamma) sigma`` with fresh noise
        (Algorithm 2, lines 4-6). Noise is drawn even when gamma is 0, as in Diffusers."""
        cfg = self.config
        if self.num_inference_steps is None:
            raise RuntimeError("KarrasVeScheduler: call set_timesteps() before add_noise_to_input()")
        gamma = min(cfg.s_churn / self.num_inference_steps, 2**0.5 - 1) if cfg.s_min <= sigma <= cfg.s_max else 0
        eps = cfg.s_noise * randn_tensor(sample.shape, generator=generator).to(sample.device)
        sigma_hat = sigma + gamma * sigma
        sample_hat = sample + (sigma_hat**2 - sigma**2) ** 0.5 * eps
        return sample_hat, sigma_hat

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        sigma_hat: float | torch.Tensor,
        sigma_prev: float | torch.Tensor,
        sample_hat: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
        generator: Generator = None,
    ) -> KarrasVeOutput | tuple[torch.Tensor, ...]:
        """Euler predictor ``step(model_output, sigma_hat, sigma_prev, sample_hat)`` (Diffusers' form).

        Protocol form ``step(model_output, t, sample)`` (no ``sample_hat``): ``t`` is one of
        ``timesteps`` and the step goes from ``schedule[t]`` to ``schedule[t - 1]`` without churn.
        ``eta`` and ``generator`` are unused (noise enters in :meth:`add_noise_to_input`).
        """
        if sample_hat is None:
            if not isinstance(sigma_prev, torch.Tensor) or sigma_prev.ndim == 0:
                raise TypeError(
                    "KarrasVeScheduler.step takes (model_output, sigma_hat, sigma_prev, sample_hat), "
                    "or (model_output, timestep, sample) with timestep from scheduler.timesteps"
                )
            if self.num_inference_steps is None:
                raise RuntimeError("KarrasVeScheduler: call set_timesteps() before step()")
            t = int(self.timesteps[self.index_for_timestep(sigma_hat)])  # validates: t is in the schedule
            self._count_step(sigma_hat)
            sample_hat, sigma_hat = sigma_prev, self._levels[t]
            sigma_prev = self._levels[t - 1] if t > 0 else 0.0
        prev, derivative, x0 = karras_ve_euler(model_output, sigma_hat, sigma_prev, sample_hat)
        if not return_dict:
            return (prev, derivative)
        return KarrasVeOutput(prev_sample=prev, derivative=derivative, pred_original_sample=x0)

    def step_correct(
        self,
        model_output: torch.Tensor,
        sigma_hat: float | torch.Tensor,
        sigma_prev: float | torch.Tensor,
        sample_hat: torch.Tensor,
        sample_prev: torch.Tensor,
        derivative: torch.Tensor,
        return_dict: bool = True,
    ) -> KarrasVeOutput | tuple[torch.Tensor, ...]:
        """Heun correction of the predictor's ``sample_prev`` (``model_output`` evaluated there)."""
        prev, x0 = karras_ve_heun(model_output, sigma_hat, sigma_prev, sample_hat, sample_prev, derivative)
        if not return_dict:
            return (prev, derivative)
        return KarrasVeOutput(prev_sample=prev, derivative=derivative, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x0 + schedule[t] * noise`` (Diffusers does not implement this for KarrasVe)."""
        if self.schedule is None:
            raise RuntimeError("KarrasVeScheduler: call set_timesteps() before add_noise()")
        levels = self.schedule.to(device=original_samples.device, dtype=original_samples.dtype)
        return add_noise_sigma(original_samples, noise, levels[timesteps.to(original_samples.device).long()])
