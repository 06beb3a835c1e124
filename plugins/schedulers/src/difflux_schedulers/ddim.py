"""DDIM: denoising diffusion implicit models, and their inversion (Song et al. 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput

from . import sampling
from ._base import KARRAS_COMPATIBLES, Generator, TrainedBetas, VPScheduler
from .sampling import PredictionType
from .schedules import TimestepSpacing

__all__ = ["DDIMInverseScheduler", "DDIMScheduler"]


class DDIMScheduler(VPScheduler):
    """DDIM sampling; ``eta`` interpolates between deterministic DDIM (0) and DDPM-like noise (1)."""

    _compatibles: ClassVar[tuple[str, ...]] = KARRAS_COMPATIBLES
    order: ClassVar[int] = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        trained_betas: TrainedBetas = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: PredictionType = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: TimestepSpacing = "leading",
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._init_training_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        # alpha_bar "before" the first training step: 1 (a clean sample) or alpha_bar_0
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Space ``num_inference_steps`` timesteps per ``timestep_spacing`` (custom lists are not supported)."""
        self._check_set_timesteps_args(
            num_inference_steps, timesteps, sigmas, accepts_timesteps=False, accepts_sigmas=False
        )
        num_inference_steps = self._required_steps(type(self).__name__, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(self._spaced_timesteps(num_inference_steps)).to(device)
        self._reset_step_state()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Generator = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One DDIM step (Song et al. 2021, eq. 12) from ``timestep`` to ``timestep - T // n``."""
        self._require_timesteps()
        self._position(timestep)
        self._count_step(timestep)
        cfg = self.config
        t = self._timestep_value(timestep)
        prev_t = t - cfg.num_train_timesteps // self._steps()
        alpha_prod_t, sqrt_alpha, sqrt_one_minus_alpha = self._roots(t)
        alpha_prod_t_prev, sqrt_alpha_prev, sqrt_one_minus_alpha_prev = self._roots(prev_t)
        x0 = sampling.x0_from_roots_vp(model_output, sample, sqrt_alpha, sqrt_one_minus_alpha, cfg.prediction_type)
        eps = sampling.eps_from_roots_vp(model_output, sample, sqrt_alpha, sqrt_one_minus_alpha, cfg.prediction_type)
        x0 = self._clip_or_threshold(x0)
        if use_clipped_model_output:  # re-derive eps from the clipped x0 (Glide)
            eps = (sample - sqrt_alpha * x0) / sqrt_one_minus_alpha
        if eta == 0:  # sigma_t = 0: the direction coefficient is sqrt(1 - a_prev)
            return self._output(
                sampling.ddim_step_from_roots(x0, eps, sqrt_alpha_prev, sqrt_one_minus_alpha_prev), x0, return_dict
            )
        std_dev_t = eta * sampling.ddim_variance(alpha_prod_t, alpha_prod_t_prev) ** 0.5
        prev_sample = sampling.ddim_step(x0, eps, alpha_prod_t_prev, std_dev_t)
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("DDIMScheduler.step: pass generator= or variance_noise=, not both")
            if variance_noise is None:
                variance_noise = sampling.noise_like(model_output, generator)
            prev_sample = prev_sample + std_dev_t * variance_noise
        return self._output(prev_sample, x0, return_dict)


class DDIMInverseScheduler(VPScheduler):
    """Deterministic DDIM run backwards, from a clean sample to its noise (for editing by inversion)."""

    _compatibles: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        trained_betas: TrainedBetas = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: PredictionType = "epsilon",
        clip_sample_range: float = 1.0,
        timestep_spacing: Literal["leading", "trailing"] = "leading",
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._init_training_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        # alpha_bar before the first training step: where the first inverted step starts
        self.initial_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.final_alpha_cumprod = self.initial_alpha_cumprod
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps).copy().astype(np.int64))

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Ascending timesteps: the DDIM schedule reversed."""
        self._check_set_timesteps_args(
            num_inference_steps, timesteps, sigmas, accepts_timesteps=False, accepts_sigmas=False
        )
        num_inference_steps = self._required_steps(type(self).__name__, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(self._spaced_timesteps(num_inference_steps)[::-1].copy()).to(device)
        self._reset_step_state()

    def _step_pairs(self) -> list[tuple[int, int]]:
        cfg = self.config
        stride = cfg.num_train_timesteps // self._steps()
        return [(t, min(t - stride, cfg.num_train_timesteps - 1)) for t in self._positions]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
        generator: Generator = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One inverted DDIM step, from ``timestep - T // n`` up to ``timestep`` (deterministic: ``eta`` unused)."""
        self._require_timesteps()
        self._position(timestep)
        self._count_step(timestep)
        cfg = self.config
        next_t = self._timestep_value(timestep)
        t = min(next_t - cfg.num_train_timesteps // self._steps(), cfg.num_train_timesteps - 1)
        _, sqrt_alpha, sqrt_one_minus_alpha = self._roots(t)
        _, sqrt_alpha_next, sqrt_one_minus_alpha_next = self._roots(next_t)
        x0 = sampling.x0_from_roots_vp(model_output, sample, sqrt_alpha, sqrt_one_minus_alpha, cfg.prediction_type)
        eps = sampling.eps_from_roots_vp(model_output, sample, sqrt_alpha, sqrt_one_minus_alpha, cfg.prediction_type)
        x0 = self._clip_or_threshold(x0)
        next_sample = sampling.ddim_step_from_roots(x0, eps, sqrt_alpha_next, sqrt_one_minus_alpha_next)
        return self._output(next_sample, x0, return_dict)
