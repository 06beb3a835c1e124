"""DDIM: denoising diffusion implicit models, and their inversion (Song et al. 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput

from . import sampling
from ._base import KARRAS_COMPATIBLES, Generator, TrainedBetas, VPScheduler
from .sampling import PredictionType
from .schedules import TimestepSpacing, spaced_timesteps

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
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Space ``num_inference_steps`` timesteps per ``timestep_spacing`` (custom lists are not supported)."""
        self._check_set_timesteps_args(
            num_inference_steps, timesteps, sigmas, accepts_timesteps=False, accepts_sigmas=False
        )
        assert num_inference_steps is not None
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        ts = spaced_timesteps(num_inference_steps, cfg.num_train_timesteps, cfg.timestep_spacing, cfg.steps_offset)
        self.timesteps = torch.from_numpy(ts).to(device)
        self._reset_step_state()

    def _alpha_prod_prev(self, prev_timestep: Any) -> torch.Tensor:
        return self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        *,
        eta: float = 0.0,
        generator: Generator = None,
        return_dict: bool = True,
        use_clipped_model_output: bool = False,
        variance_noise: torch.Tensor | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One DDIM step (Song et al. 2021, eq. 12) from ``timestep`` to ``timestep - T // n``."""
        self._require_timesteps()
        self._check_in_schedule(timestep)
        assert self.num_inference_steps is not None
        cfg = self.config
        prev_timestep = timestep - cfg.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self._alpha_prod_prev(prev_timestep)
        x0, eps = sampling.predict_x0_eps_vp(model_output, sample, alpha_prod_t, cfg.prediction_type)
        x0 = sampling.clip_or_threshold(
            x0,
            thresholding=cfg.thresholding,
            clip_sample=cfg.clip_sample,
            clip_sample_range=cfg.clip_sample_range,
            dynamic_thresholding_ratio=cfg.dynamic_thresholding_ratio,
            sample_max_value=cfg.sample_max_value,
        )
        std_dev_t = eta * sampling.ddim_variance(alpha_prod_t, alpha_prod_t_prev) ** 0.5
        if use_clipped_model_output:  # re-derive eps from the clipped x0 (Glide)
            eps = (sample - alpha_prod_t**0.5 * x0) / (1 - alpha_prod_t) ** 0.5
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
        self.initial_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps).copy().astype(np.int64))

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Ascending timesteps: the DDIM schedule reversed."""
        self._check_set_timesteps_args(
            num_inference_steps, timesteps, sigmas, accepts_timesteps=False, accepts_sigmas=False
        )
        assert num_inference_steps is not None
        cfg = self.config
        self.num_inference_steps = num_inference_steps
        ts = spaced_timesteps(num_inference_steps, cfg.num_train_timesteps, cfg.timestep_spacing, cfg.steps_offset)
        self.timesteps = torch.from_numpy(ts[::-1].copy()).to(device)
        self._reset_step_state()

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
        """One inverted DDIM step, from ``timestep - T // n`` up to ``timestep`` (deterministic: ``eta`` unused)."""
        self._require_timesteps()
        self._check_in_schedule(timestep)
        assert self.num_inference_steps is not None
        cfg = self.config
        next_timestep = timestep
        current = min(timestep - cfg.num_train_timesteps // self.num_inference_steps, cfg.num_train_timesteps - 1)
        alpha_prod_t = self.alphas_cumprod[current] if current >= 0 else self.initial_alpha_cumprod
        alpha_prod_t_next = self.alphas_cumprod[next_timestep]
        x0, eps = sampling.predict_x0_eps_vp(model_output, sample, alpha_prod_t, cfg.prediction_type)
        if cfg.clip_sample:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
        next_sample = sampling.ddim_step(x0, eps, alpha_prod_t_next, 0.0)
        return self._output(next_sample, x0, return_dict)
