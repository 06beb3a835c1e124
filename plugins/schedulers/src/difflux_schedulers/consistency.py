"""Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1).

Each step maps the sample to a clean estimate with the consistency boundary scalings, then
adds fresh noise at the next (Karras-spaced) noise level.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput
from difflux.torch_utils import randn_tensor

from . import schedules
from ._base import BaseScheduler, Generator, custom_array
from .sampling import add_noise_sigma, edm_scalings

__all__ = ["CMStochasticIterativeScheduler", "cm_sigma_to_t"]


def cm_sigma_to_t(sigmas: np.ndarray | float) -> np.ndarray:
    """Network time input of consistency models: ``1000 * log(sigma) / 4`` (EDM's c_noise, scaled)."""
    return np.asarray(1000 * 0.25 * np.log(np.asarray(sigmas, dtype=np.float64) + 1e-44))


class CMStochasticIterativeScheduler(BaseScheduler):
    """Multistep sampler for consistency models (``num_train_timesteps`` is the discretisation N).

    ``set_timesteps`` takes ``num_inference_steps`` or custom integer ``timesteps=`` on the training
    discretisation (descending, below ``num_train_timesteps``).
    """

    order = 1

    _steps_on_training_schedule = True
    _training_tables = False

    def _prepare_training_schedule(self) -> None:
        """The fresh schedule is ``set_timesteps(num_train_timesteps)``'s: build its tables once."""
        if not self._training_tables:
            begin = self._begin_index
            self.set_timesteps(self.config.num_train_timesteps)
            self.num_inference_steps = None
            self._begin_index = begin
            self._training_tables = True

    def __init__(
        self,
        num_train_timesteps: int = 40,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        s_noise: float = 1.0,
        rho: float = 7.0,
        clip_denoised: bool = True,
    ) -> None:
        self.init_noise_sigma = sigma_max
        sigmas = self._karras(np.linspace(0, 1, num_train_timesteps))
        self.sigmas = torch.from_numpy(sigmas)
        self.timesteps = torch.from_numpy(cm_sigma_to_t(sigmas))
        self.num_inference_steps = None
        self.custom_timesteps = False
        self.is_scale_input_called = False

    def _karras(self, ramp: np.ndarray) -> np.ndarray:
        cfg = self.config
        return schedules.karras_from_ramp(ramp, cfg.sigma_min, cfg.sigma_max, cfg.rho)

    def sigma_to_t(self, sigmas: np.ndarray | float) -> np.ndarray:
        """See :func:`cm_sigma_to_t`."""
        return cm_sigma_to_t(sigmas)

    def get_scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """EDM ``(c_skip, c_out)`` at ``sigma``."""
        return edm_scalings(sigma, self.config.sigma_data)

    def get_scalings_for_boundary_condition(
        self, sigma: torch.Tensor
    ) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """``(c_skip, c_out)`` with the boundary condition f(x, sigma_min) = x."""
        return edm_scalings(sigma, self.config.sigma_data, self.config.sigma_min)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Evenly strided training steps (``num_inference_steps``) or custom ``timesteps=``, mapped to
        Karras noise levels; the final level is ``sigma_min``."""
        cfg = self.config
        n_train = cfg.num_train_timesteps
        if sigmas is not None:
            raise ValueError("CMStochasticIterativeScheduler.set_timesteps does not take sigmas=; pass timesteps=")
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError(
                "CMStochasticIterativeScheduler.set_timesteps: pass one of num_inference_steps or timesteps="
            )
        if timesteps is not None:
            ts = [int(t) for t in custom_array(timesteps, "timesteps", type(self).__name__)]
            if not ts:
                raise ValueError("CMStochasticIterativeScheduler.set_timesteps: timesteps= is empty")
            if any(b >= a for a, b in itertools.pairwise(ts)):
                raise ValueError(f"timesteps= must be strictly descending, got {ts}")
            if ts[0] >= n_train:
                raise ValueError(f"timesteps= must start below num_train_timesteps={n_train}, got {ts[0]}")
            steps = np.array(ts, dtype=np.int64)
            self.custom_timesteps = True
        else:
            num_inference_steps = self._required_steps(type(self).__name__, num_inference_steps)
            schedules.check_num_inference_steps(num_inference_steps, n_train)
            stride = n_train // num_inference_steps
            steps = (np.arange(0, num_inference_steps) * stride).round()[::-1].copy().astype(np.int64)
            self.custom_timesteps = False
        self.num_inference_steps = len(steps)
        levels = self._karras(steps[::-1].copy() / (n_train - 1))
        self.timesteps = torch.from_numpy(cm_sigma_to_t(levels)).to(device=device)
        self.sigmas = schedules.with_final_sigma(levels, cfg.sigma_min)
        # Per-index constants as exact float32 values: no tensor work per step.
        sig = self.sigmas
        c_skip, c_out = self.get_scalings_for_boundary_condition(sig)
        sigma_next = sig[1:].clamp(min=cfg.sigma_min, max=cfg.sigma_max)
        self._c_skip: list[float] = c_skip.tolist()  # type: ignore[union-attr]
        self._c_out: list[float] = c_out.tolist()  # type: ignore[union-attr]
        self._noise_scale: list[float] = ((sigma_next**2 - cfg.sigma_min**2) ** 0.5).tolist()
        self._c_in_denominator: list[float] = ((sig**2 + cfg.sigma_data**2) ** 0.5).tolist()
        self._reset_step_state()

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + sigma_data^2) (EDM's c_in)."""
        self._require_timesteps()
        i = self._ensure_step_index(timestep)
        self.is_scale_input_called = True
        return sample / self._c_in_denominator[i]

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
        """Consistency estimate at this level, then noise to the next level (``eta`` is unused)."""
        self._require_timesteps()
        self._reject_integer_timestep(timestep)
        i = self._ensure_step_index(timestep)
        # Diffusers compares with num_train_timesteps here; the last level is sigma_min either way.
        j = i if i + 1 < self.config.num_train_timesteps else len(self._noise_scale) - 1
        denoised = model_output * self._c_out[i] + sample * self._c_skip[i]
        if self.config.clip_denoised:
            denoised = denoised.clamp(-1, 1)
        if len(self.timesteps) > 1:
            noise = randn_tensor(
                model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator
            )
            if self.config.s_noise != 1.0:
                noise = noise * self.config.s_noise
            prev_sample = denoised + noise * self._noise_scale[j]
        else:
            prev_sample = denoised
        self._step_index = i + 1
        return self._output(prev_sample, None, return_dict)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``x0 + sigma(t) * noise`` for ``timesteps`` taken from ``self.timesteps``."""
        return add_noise_sigma(original_samples, noise, self._sigmas_at(timesteps, original_samples))
