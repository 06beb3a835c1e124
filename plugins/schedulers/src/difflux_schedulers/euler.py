"""Euler and Euler-ancestral samplers of the probability-flow ODE / SDE (Karras et al. 2022, k-diffusion)."""

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

__all__ = ["EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler"]

BetaScheduleVE = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]


class EulerDiscreteScheduler(SigmaScheduler):
    """Euler steps of the probability-flow ODE, with optional churn (Karras et al. 2022, Algorithm 2)."""

    _compatibles: ClassVar[tuple[str, ...]] = KARRAS_COMPATIBLES
    order: ClassVar[int] = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaScheduleVE = "linear",
        trained_betas: TrainedBetas = None,
        prediction_type: PredictionType = "epsilon",
        interpolation_type: Literal["linear", "log_linear"] = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: TimestepSpacing = "linspace",
        timestep_type: Literal["discrete", "continuous"] = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
    ) -> None:
        self._init_training_schedule(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
            finite_terminal_snr=True,
        )
        self._init_sigmas()
        if self._continuous_v():
            self.timesteps = 0.25 * self.sigmas[:-1].log()
        else:
            self.timesteps = torch.from_numpy(np.arange(num_train_timesteps - 1, -1, -1, dtype=np.float32))
        self.is_scale_input_called = False

    def _continuous_v(self) -> bool:
        return bool(self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction")

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Set the schedule from ``num_inference_steps``, custom ``timesteps`` or custom ``sigmas`` (last = final)."""
        self._check_set_timesteps_args(num_inference_steps, timesteps, sigmas)
        cfg = self.config
        name = type(self).__name__
        custom_t = None if timesteps is None else custom_array(timesteps, "timesteps", name).astype(np.float32)
        custom_s = None if sigmas is None else custom_array(sigmas, "sigmas", name).astype(np.float32)
        if custom_t is not None:
            self._check_custom_timesteps_allowed()
            if self._continuous_v():
                raise ValueError(
                    "EulerDiscreteScheduler: custom timesteps= cannot be used with continuous v-prediction timesteps "
                    "(timestep_type='continuous'); pass sigmas= instead"
                )
        if custom_t is not None:
            num_inference_steps = len(custom_t)
        elif custom_s is not None:
            num_inference_steps = len(custom_s) - 1
        num_inference_steps = self._required_steps(name, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        train_sigmas = self._training_sigmas()
        log_sigmas = np.log(train_sigmas)
        if custom_s is not None:
            sigma_arr = custom_s
            ts = schedules.sigma_to_t(sigma_arr[:-1], log_sigmas)
        else:
            if cfg.interpolation_type == "log_linear":
                # As Diffusers: n + 1 sigmas evenly spaced in log-sigma from the largest to the smallest training
                # sigma, whatever the timesteps (spaced per config, or custom) are.
                ts = schedules.spaced_timesteps(
                    num_inference_steps, cfg.num_train_timesteps, cfg.timestep_spacing, cfg.steps_offset, integer=False
                )
                if custom_t is not None:
                    ts = custom_t
                sig = (
                    torch.linspace(np.log(train_sigmas[-1]), np.log(train_sigmas[0]), num_inference_steps + 1)
                    .exp()
                    .numpy()
                )
                ramp = self._sigma_ramp(sig, num_inference_steps)
                if ramp is not None:
                    sig, ts = ramp, schedules.sigma_to_t(ramp, log_sigmas)
            else:
                ts, sig, _ = self._spaced_sigmas(num_inference_steps, custom_t)
            last = (
                ((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5
                if cfg.final_sigmas_type == "sigma_min"
                else 0
            )
            sigma_arr = np.concatenate([sig, [last]]).astype(np.float32)
        sigmas_t = torch.from_numpy(sigma_arr).to(dtype=torch.float32, device=device)
        if self._continuous_v():
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sigmas_t[:-1]]).to(device=device)
        else:
            self.timesteps = torch.from_numpy(np.asarray(ts).astype(np.float32)).to(device=device)
        self.sigmas = sigmas_t.to("cpu")
        self._on_new_schedule()
        self._reset_step_state()

    def _on_new_schedule(self) -> None:
        # per step: sigma and sigma_next - sigma as 0-dim tensors (the churn-free step does no tensor work)
        self._euler_steps = list(zip(self.sigmas[:-1].unbind(), (self.sigmas[1:] - self.sigmas[:-1]).unbind()))

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
        *,
        eta: float = 0.0,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One Euler step; ``s_churn`` > 0 first adds noise to raise sigma to sigma_hat (Karras Alg. 2)."""
        self._require_timesteps()
        index = self._ensure_step_index(timestep)
        sample = sample.to(torch.float32)
        if s_churn == 0:  # gamma = 0, so sigma_hat = sigma
            sigma, dt = self._euler_steps[index]
            denoised = sampling.denoised_from_sigma(model_output, sample, sigma, self.config.prediction_type)
            prev_sample = sampling.to_d(sample, sigma, denoised).mul_(dt).add_(sample)
            self._step_index = index + 1
            return self._output(prev_sample.to(model_output.dtype), denoised, return_dict)
        sigma = self.sigmas[index]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            eps = sampling.noise_like(model_output, generator) * s_noise
            sample = sample + eps * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = sampling.denoised_from_sigma(
            model_output, sample, sigma, self.config.prediction_type, sigma_hat=sigma_hat
        )
        derivative = sampling.to_d(sample, sigma_hat, denoised)
        prev_sample = sample + derivative * (self.sigmas[index + 1] - sigma_hat)
        self._step_index = index + 1
        return self._output(prev_sample.to(model_output.dtype), denoised, return_dict)


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Euler steps down to sigma_down plus fresh noise of std sigma_up (k-diffusion ``sample_euler_ancestral``)."""

    _compatibles: ClassVar[tuple[str, ...]] = KARRAS_COMPATIBLES
    order: ClassVar[int] = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: BetaScheduleVE = "linear",
        trained_betas: TrainedBetas = None,
        prediction_type: PredictionType = "epsilon",
        timestep_spacing: TimestepSpacing = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._init_training_schedule(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
            finite_terminal_snr=True,
        )
        self._init_sigmas()
        self.timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy())
        self._ancestral: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _on_new_schedule(self) -> None:
        # Per step: sigma, sigma_up and sigma_down - sigma as 0-dim tensors (elementwise over the table:
        # the same float32 values as computing them in each step).
        sigma_up, sigma_down = sampling.get_ancestral_step(self.sigmas[:-1], self.sigmas[1:])
        sigmas = self.sigmas[:-1]
        self._ancestral = list(zip(sigmas.unbind(), sigma_up.unbind(), (sigma_down - sigmas).unbind()))

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
        """One ancestral Euler step; fresh noise comes from ``generator`` (``eta`` is unused: always 1)."""
        self._require_timesteps()
        index = self._ensure_step_index(timestep)
        sigma, sigma_up, dt = self._ancestral[index]
        sample = sample.to(torch.float32)
        denoised = sampling.denoised_from_sigma(model_output, sample, sigma, self.config.prediction_type)
        prev_sample = sampling.to_d(sample, sigma, denoised).mul_(dt).add_(sample)
        prev_sample.add_(sampling.noise_like(model_output, generator) * sigma_up)
        self._step_index = index + 1
        return self._output(prev_sample.to(model_output.dtype), denoised, return_dict)
