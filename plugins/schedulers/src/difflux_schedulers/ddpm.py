"""DDPM: ancestral sampling of the reverse diffusion posterior (Ho et al. 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput

from . import sampling
from ._base import KARRAS_COMPATIBLES, Generator, TrainedBetas, VPScheduler
from .sampling import PredictionType
from .schedules import TimestepSpacing, spaced_timesteps

__all__ = ["DDPMScheduler"]

VarianceType = Literal["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]


class DDPMScheduler(VPScheduler):
    """Denoising diffusion probabilistic models: sample x_{t-1} ~ q(x_{t-1} | x_t, x0_hat)."""

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
        self.one = torch.tensor(1.0)
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
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Choose the inference timesteps: ``num_inference_steps`` spaced per config, or explicit ``timesteps``."""
        self._check_set_timesteps_args(num_inference_steps, timesteps, sigmas, accepts_sigmas=False)
        cfg = self.config
        if timesteps is not None:
            ts = np.array(timesteps, dtype=np.int64)
            if np.any(ts[1:] >= ts[:-1]):
                raise ValueError(f"DDPMScheduler: custom timesteps must be strictly descending, got {list(timesteps)}")
            if ts[0] >= cfg.num_train_timesteps or ts[-1] < 0:
                raise ValueError(
                    f"DDPMScheduler: custom timesteps must lie in [0, {cfg.num_train_timesteps - 1}], "
                    f"got {list(timesteps)}"
                )
            self.custom_timesteps = True
            self.num_inference_steps = len(ts)
        else:
            assert num_inference_steps is not None
            ts = spaced_timesteps(num_inference_steps, cfg.num_train_timesteps, cfg.timestep_spacing, cfg.steps_offset)
            self.custom_timesteps = False
            self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(ts).to(device)
        self._reset_step_state()

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The schedule's next timestep after ``timestep`` (-1 after the last)."""
        index = self.index_for_timestep(timestep)
        if index == self.timesteps.shape[0] - 1:
            return torch.tensor(-1)
        return self.timesteps[index + 1]

    def _variance(
        self, t: int | torch.Tensor, prev_t: torch.Tensor, predicted_variance: torch.Tensor | None
    ) -> torch.Tensor:
        """Variance (or log-variance / std, per variance_type) of the reverse step (DDPM sec. 3.2, iDDPM eq. 15)."""
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        small = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
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

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        *,
        eta: float = 0.0,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One ancestral step from ``timestep`` to the previous timestep of the schedule (``eta`` is unused)."""
        self._require_timesteps()
        cfg = self.config
        t = timestep
        prev_t = self.previous_timestep(t)
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        x0, _ = sampling.predict_x0_eps_vp(model_output, sample, alpha_prod_t, cfg.prediction_type)
        x0 = sampling.clip_or_threshold(
            x0,
            thresholding=cfg.thresholding,
            clip_sample=cfg.clip_sample,
            clip_sample_range=cfg.clip_sample_range,
            dynamic_thresholding_ratio=cfg.dynamic_thresholding_ratio,
            sample_max_value=cfg.sample_max_value,
        )
        prev_sample = sampling.ddpm_posterior_mean(x0, sample, alpha_prod_t, alpha_prod_t_prev)
        if t > 0:
            noise = sampling.noise_like(model_output, generator)
            variance = self._variance(t, prev_t, predicted_variance)
            if self.variance_type == "fixed_small_log":
                prev_sample = prev_sample + variance * noise
            elif self.variance_type == "learned_range":
                prev_sample = prev_sample + torch.exp(0.5 * variance) * noise
            else:
                prev_sample = prev_sample + variance**0.5 * noise
        return self._output(prev_sample, x0, return_dict)
