"""Predictor-corrector sampling of the variance-exploding SDE (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", Algorithms 2 (reverse diffusion predictor) and 4 (Langevin corrector)).

The model predicts the score. Time runs from 1 down to ``sampling_eps``; the noise levels are
``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` and, for the predictor, the geometric
discretisation ``discrete_sigmas``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from difflux.schedulers import SchedulerOutput
from difflux.torch_utils import randn_tensor

from . import schedules
from ._base import BaseScheduler, Generator
from .sampling import add_noise_sigma, broadcast_to

__all__ = ["ScoreSdeVeScheduler", "SdeVeOutput", "langevin_step_size"]


@dataclasses.dataclass
class SdeVeOutput(SchedulerOutput):
    """``prev_sample`` and its mean before the noise was added (``prev_sample_mean``)."""

    prev_sample_mean: torch.Tensor | None = None


def langevin_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float) -> torch.Tensor:
    """Corrector step size ``2 (snr |z| / |score|)^2`` with batch-mean norms (Song et al. 2021, Algorithm 4)."""
    grad_norm = torch.norm(score.reshape(score.shape[0], -1), dim=-1).mean()
    noise_norm = torch.norm(noise.reshape(noise.shape[0], -1), dim=-1).mean()
    step_size: torch.Tensor = (snr * noise_norm / grad_norm) ** 2 * 2
    return step_size


class ScoreSdeVeScheduler(BaseScheduler):
    """Variance-exploding SDE sampler: ``step_pred`` (predictor) and ``step_correct`` (corrector).

    ``step`` (the common protocol) is the predictor alone. ``set_timesteps`` also sets the noise
    levels for that many steps (Diffusers needs a separate ``set_sigmas`` call; calling it anyway
    changes nothing).
    """

    order = 1

    def __init__(
        self,
        num_train_timesteps: int = 2000,
        snr: float = 0.15,
        sigma_min: float = 0.01,
        sigma_max: float = 1348.0,
        sampling_eps: float = 1e-5,
        correct_steps: int = 1,
    ) -> None:
        self.init_noise_sigma = sigma_max
        self.num_inference_steps = None
        self.timesteps = torch.linspace(1, sampling_eps, num_train_timesteps)
        self.set_sigmas(num_train_timesteps, sigma_min, sigma_max, sampling_eps)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The score model takes the sample unscaled."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        sampling_eps: float | None = None,
    ) -> None:
        """``num_inference_steps`` times evenly spaced from 1 to ``sampling_eps``, and their noise levels."""
        if timesteps is not None or sigmas is not None:
            raise ValueError("ScoreSdeVeScheduler.set_timesteps takes neither timesteps= nor sigmas=")
        if num_inference_steps is None:
            raise ValueError("ScoreSdeVeScheduler.set_timesteps: pass num_inference_steps")
        schedules.check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
        eps = sampling_eps if sampling_eps is not None else self.config.sampling_eps
        self.timesteps = torch.linspace(1, eps, num_inference_steps, device=device)
        self.set_sigmas(num_inference_steps)
        self.num_inference_steps = num_inference_steps
        self._reset_step_state()

    def set_sigmas(
        self,
        num_inference_steps: int,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        sampling_eps: float | None = None,
    ) -> None:
        """Noise levels ``sigmas`` at the current timesteps and the predictor's ``discrete_sigmas``
        (``num_inference_steps`` geometric levels from ``sigma_min`` to ``sigma_max``)."""
        cfg = self.config
        lo = sigma_min if sigma_min is not None else cfg.sigma_min
        hi = sigma_max if sigma_max is not None else cfg.sigma_max
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(lo), math.log(hi), num_inference_steps))
        # Diffusers builds these one python-float ** float32-tensor at a time; keep that arithmetic.
        self.sigmas = torch.tensor([lo * (hi / lo) ** t for t in self.timesteps])
        # Predictor constants per discrete level k: g = sqrt(sigma_k^2 - sigma_{k-1}^2) and g^2.
        adjacent = torch.cat([torch.zeros(1), self.discrete_sigmas[:-1]])
        g = (self.discrete_sigmas**2 - adjacent**2) ** 0.5
        self._diffusion: list[float] = g.tolist()
        self._diffusion_sq: list[float] = (g**2).tolist()

    def get_adjacent_sigma(self, timesteps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The discrete level below each of ``timesteps`` (0 below the first)."""
        below = self.discrete_sigmas[(timesteps - 1).clamp(min=0)].to(timesteps.device)
        return torch.where(timesteps == 0, torch.zeros_like(t.to(timesteps.device)), below)

    def _level_index(self, timestep: float | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        t = timestep * torch.ones(batch, device=device)
        return (t * (len(self.timesteps) - 1)).long()

    def step_pred(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> SdeVeOutput | tuple[torch.Tensor, ...]:
        """Reverse-diffusion predictor: ``x + g^2 score + g z`` with ``g^2 = sigma_k^2 - sigma_{k-1}^2``."""
        self._require_timesteps()
        idx = self._level_index(timestep, sample.shape[0], sample.device)
        k = int(idx[0])
        if bool((idx == k).all()):
            prev_mean = sample + model_output * self._diffusion_sq[k]
            diffusion: torch.Tensor | float = self._diffusion[k]
        else:  # per-sample times
            idx = idx.to(self.discrete_sigmas.device)
            sigma = self.discrete_sigmas[idx].to(sample.device)
            adjacent = self.get_adjacent_sigma(idx, idx.float()).to(sample.device)
            diffusion = broadcast_to((sigma**2 - adjacent**2) ** 0.5, sample)
            prev_mean = sample + diffusion**2 * model_output
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        prev_sample = prev_mean + noise * diffusion
        if not return_dict:
            return (prev_sample, prev_mean)
        return SdeVeOutput(prev_sample=prev_sample, prev_sample_mean=prev_mean)

    def step_correct(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """Langevin corrector: ``x + e score + sqrt(2 e) z`` with the step size of :func:`langevin_step_size`."""
        self._require_timesteps()
        noise = randn_tensor(sample.shape, generator=generator).to(sample.device)
        step_size = langevin_step_size(model_output, noise, self.config.snr).to(sample.device)
        prev_mean = sample + step_size * model_output
        prev_sample = prev_mean + (step_size * 2) ** 0.5 * noise
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
    ) -> SdeVeOutput | tuple[torch.Tensor, ...]:
        """The protocol's step: the predictor alone (:meth:`step_pred`); ``eta`` is unused."""
        out = self.step_pred(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        self._count_step(timestep)
        return out

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor | None, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """``x0 + discrete_sigmas[k] * noise``: ``timesteps`` are level indices k (integers, as in Diffusers)
        or times in [sampling_eps, 1] taken from ``self.timesteps``."""
        timesteps = timesteps.to(original_samples.device)
        if timesteps.is_floating_point():
            timesteps = (timesteps * (len(self.timesteps) - 1)).long()
        sigmas = self.discrete_sigmas.to(original_samples.device)[timesteps]
        if noise is None:
            noise = torch.randn_like(original_samples)
        return add_noise_sigma(original_samples, noise, sigmas)
