"""DDPM: ancestral sampling of the reverse diffusion posterior (Ho et al. 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput

from . import sampling
from ._base import KARRAS_COMPATIBLES, Generator, TrainedBetas, VPScheduler, custom_array
from .sampling import PredictionType
from .schedules import TimestepSpacing

__all__ = ["DDPMScheduler"]

VarianceType = Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]


class DDPMScheduler(VPScheduler):
    """Denoising diffusion probabilistic models: sample x_{t-1} ~ q(x_{t-1} | x_t, x0_hat).

    A fresh scheduler holds all training timesteps, so ``step`` works before ``set_timesteps``
    (training loops, as in Diffusers).
    """

    _steps_on_training_schedule = True

    _compatibles: ClassVar[tuple[str, ...]] = KARRAS_COMPATIBLES
    order: ClassVar[int] = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"] = "linear",
        trained_betas: TrainedBetas = None,
        variance_type: VarianceType = "fixed_small",
        clip_sample: bool = True,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._init_training_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self.one = self.final_alpha_cumprod = torch.tensor(1.0)
        # per (t, prev_t): the posterior-mean weights of x0 and x_t, and the fixed variance and std
        self._posterior: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}
        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self.variance_type = variance_type

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Choose the inference timesteps: ``num_inference_steps`` spaced per config, or explicit ``timesteps``."""
        self._check_set_timesteps_args(num_inference_steps, timesteps, sigmas, accepts_sigmas=False)
        cfg = self.config
        if timesteps is not None:
            ts = custom_array(timesteps, "timesteps", "DDPMScheduler").astype(np.int64)
            if np.any(ts[1:] >= ts[:-1]):
                raise ValueError(f"DDPMScheduler: custom timesteps must be strictly descending, got {ts.tolist()}")
            if ts[0] >= cfg.num_train_timesteps or ts[-1] < 0:
                raise ValueError(
                    f"DDPMScheduler: custom timesteps must lie in [0, {cfg.num_train_timesteps - 1}], got {ts.tolist()}"
                )
            self.custom_timesteps = True
            self.num_inference_steps = len(ts)
        else:
            num_inference_steps = self._required_steps(type(self).__name__, num_inference_steps)
            ts = self._spaced_timesteps(num_inference_steps)
            self.custom_timesteps = False
            self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(ts).to(device)
        self._reset_step_state()

    def _step_pairs(self) -> list[tuple[int, int]]:
        ts = self.timesteps.tolist()
        pairs = list(zip(ts, [*ts[1:], -1]))
        for t, prev_t in pairs:
            self._posterior_constants(t, prev_t)
        return pairs

    def _previous_t(self, t: int) -> int:
        index = self._position(t)
        return -1 if index == len(self._positions) - 1 else self._host_timesteps()[index + 1]

    def _posterior_constants(self, t: int, prev_t: int) -> tuple[torch.Tensor, ...]:
        """``(x0 weight, x_t weight, beta_t, fixed-small variance, its root)`` of the step from ``t`` to ``prev_t``."""
        cached = self._posterior.get((t, prev_t))
        if cached is None:
            alpha_prod_t, alpha_prod_t_prev = self._alpha_at(t), self._alpha_at(prev_t)
            current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
            small = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
            x0_coeff, sample_coeff = sampling.ddpm_posterior_coefficients(alpha_prod_t, alpha_prod_t_prev)
            cached = self._posterior[(t, prev_t)] = (x0_coeff, sample_coeff, current_beta_t, small, small**0.5)
        return cached

    def _variance(
        self, t: int | torch.Tensor, prev_t: int | torch.Tensor, predicted_variance: torch.Tensor | None
    ) -> torch.Tensor:
        """Variance (or log-variance / std, per variance_type) of the reverse step (DDPM sec. 3.2, iDDPM eq. 15)."""
        _, _, current_beta_t, small, _ = self._posterior_constants(int(t), int(prev_t))
        kind = self.config.variance_type
        if kind == "fixed_small":
            return small
        if kind == "fixed_small_log":
            return torch.exp(0.5 * torch.log(small))
        if kind == "fixed_large":
            return current_beta_t
        if kind == "fixed_large_log":
            return torch.log(current_beta_t)
        if predicted_variance is None:
            raise ValueError(
                f"DDPMScheduler: variance_type={kind!r} needs a model output with twice the sample's channels"
            )
        if kind == "learned":
            return predicted_variance
        frac = (predicted_variance + 1) / 2  # learned_range: interpolate the log-variance
        return frac * torch.log(current_beta_t) + (1 - frac) * torch.log(small)

    def posterior_variance(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The reverse step's variance from ``timestep`` to the schedule's previous timestep, as ``variance_type``
        gives it (a variance, a log-variance or, for ``fixed_small_log``, a standard deviation; Diffusers'
        ``_get_variance``). Value-guided planning scales its gradients by ``exp(0.5 * this)``.

        :raises ValueError: for the learned variance types (they need the model's output).
        """
        self._require_timesteps()
        return self._variance(self._timestep_value(timestep), self._previous_t(timestep), None)  # type: ignore[arg-type]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One ancestral step from ``timestep`` to the previous timestep of the schedule (``eta`` is unused)."""
        self._require_timesteps()
        cfg = self.config
        t = self._timestep_value(timestep)
        prev_t = self._previous_t(t)
        self._count_step(timestep)
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        _, sqrt_alpha, sqrt_one_minus_alpha = self._roots(t)
        x0 = sampling.x0_from_roots_vp(model_output, sample, sqrt_alpha, sqrt_one_minus_alpha, cfg.prediction_type)
        x0 = self._clip_or_threshold(x0)
        x0_coeff, sample_coeff, _, _, small_std = self._posterior_constants(t, prev_t)
        prev_sample = x0_coeff * x0 + sample_coeff * sample
        if t > 0:
            noise = sampling.noise_like(model_output, generator)
            if self.variance_type == "fixed_small":
                prev_sample = prev_sample + small_std * noise
            else:
                variance = self._variance(t, prev_t, predicted_variance)
                if self.variance_type == "fixed_small_log":
                    prev_sample = prev_sample + variance * noise
                elif self.variance_type == "learned_range":
                    prev_sample = prev_sample + torch.exp(0.5 * variance) * noise
                else:
                    prev_sample = prev_sample + variance**0.5 * noise
        return self._output(prev_sample, x0, return_dict)
