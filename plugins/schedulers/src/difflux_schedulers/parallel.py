"""DDPM and DDIM for parallel sampling: a batched, noise-free step over many timesteps at once.

Shih et al., *Parallel Sampling of Diffusion Models* (ParaDiGMS, NeurIPS 2023, arXiv:2305.16317):
a pipeline guesses the whole trajectory, evaluates the model at a window of timesteps in one
batch, and refines the guess by Picard iteration (Algorithm 1). It needs the scheduler's drift
for a batch of ``(timestep, sample)`` pairs without noise (``batch_step_no_noise``: the pipeline
draws the noise of every step beforehand, scaled by :meth:`step_variance`), and whether the
sampler is an ODE (``_is_ode_scheduler``: no noise at all).
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import torch

from . import sampling
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler

__all__ = ["DDIMParallelScheduler", "DDPMParallelScheduler", "ParallelScheduler"]


@runtime_checkable
class ParallelScheduler(Protocol):
    """What a parallel-sampling pipeline needs of its scheduler."""

    timesteps: torch.Tensor
    _is_ode_scheduler: ClassVar[bool]

    def step_variance(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The variance of the noise the step from ``timestep`` adds (0-dim)."""
        ...

    def batch_step_no_noise(
        self, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """The noise-free step of each sample from its own timestep (one per sample)."""
        ...


def _batch_alphas(scheduler: DDPMScheduler | DDIMScheduler, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[
    torch.Tensor, torch.Tensor
]:
    """``(alpha_bar_t, alpha_bar_{t - T/n})`` per sample, shaped to broadcast over ``like``; 1 before step 0."""
    steps = int(scheduler.num_inference_steps or scheduler.config.num_train_timesteps)
    t = timesteps.to(like.device).long()
    prev = t - scheduler.config.num_train_timesteps // steps
    shape = (-1, *([1] * (like.ndim - 1)))
    table = scheduler.alphas_cumprod.to(like.device)
    alpha = table[t].view(shape)
    alpha_prev = torch.where(prev < 0, torch.ones_like(alpha.view(-1)), table[prev.clamp(min=0)]).view(shape)
    return alpha, alpha_prev


def _check_batch(name: str, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor) -> None:
    if model_output.shape[0] != sample.shape[0] or timesteps.reshape(-1).shape[0] != sample.shape[0]:
        raise ValueError(
            f"{name}.batch_step_no_noise: model_output ({model_output.shape[0]}), timesteps "
            f"({timesteps.reshape(-1).shape[0]}) and sample ({sample.shape[0]}) must have one entry per sample"
        )


class DDPMParallelScheduler(DDPMScheduler):
    """:class:`~.ddpm.DDPMScheduler` plus the batched noise-free step of parallel sampling (ParaDiGMS)."""

    _is_ode_scheduler: ClassVar[bool] = False

    def step_variance(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The reverse step's variance from ``timestep`` to the schedule's previous timestep, per
        ``variance_type`` (Ho et al. 2020, sec. 3.2; a standard deviation for ``fixed_small_log``).

        :raises ValueError: for the learned variance types (they need the model's output).
        """
        self._require_timesteps()
        return self._variance(self._timestep_value(timestep), self._previous_t(timestep), None)  # type: ignore[arg-type]

    def batch_step_no_noise(
        self, model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """The DDPM posterior mean (Ho et al. 2020, eq. 7) of each sample from its own timestep to
        ``timestep - T // n``, without noise. ``model_output`` / ``sample``: ``(N, C, ...)``; ``timesteps``: ``(N,)``.

        :raises ValueError: when the three do not have one entry per sample.
        """
        _check_batch(type(self).__name__, model_output, timesteps, sample)
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ("learned", "learned_range"):
            model_output = model_output[:, : sample.shape[1]]
        alpha, alpha_prev = _batch_alphas(self, timesteps, model_output)
        x0 = sampling.x0_from_roots_vp(
            model_output, sample, alpha**0.5, (1 - alpha) ** 0.5, self.config.prediction_type
        )
        x0 = self._clip_or_threshold(x0)
        x0_coeff, sample_coeff = sampling.ddpm_posterior_coefficients(alpha, alpha_prev)
        return x0_coeff * x0 + sample_coeff * sample


class DDIMParallelScheduler(DDIMScheduler):
    """:class:`~.ddim.DDIMScheduler` plus the batched noise-free step of parallel sampling (ParaDiGMS)."""

    _is_ode_scheduler: ClassVar[bool] = True

    def step_variance(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """sigma_t^2 of DDIM with eta = 1 (Song et al. 2021, eq. 16) for the step from ``timestep``."""
        self._require_timesteps()
        t = self._timestep_value(timestep)
        prev = t - self.config.num_train_timesteps // self._steps()
        return sampling.ddim_variance(self._alpha_at(t), self._alpha_at(prev))

    def batch_step_no_noise(
        self,
        model_output: torch.Tensor,
        timesteps: torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
    ) -> torch.Tensor:
        """The deterministic DDIM step (Song et al. 2021, eq. 12) of each sample from its own timestep to
        ``timestep - T // n``. ``model_output`` / ``sample``: ``(N, C, ...)``; ``timesteps``: ``(N,)``.

        :raises ValueError: for ``eta != 0`` (the noise is the pipeline's), or without one entry per sample.
        """
        name = type(self).__name__
        if eta != 0.0:
            raise ValueError(f"{name}.batch_step_no_noise is deterministic: eta must be 0, got {eta!r}")
        self._require_timesteps()
        _check_batch(name, model_output, timesteps, sample)
        alpha, alpha_prev = _batch_alphas(self, timesteps, model_output)
        sqrt_alpha, sqrt_one_minus = alpha**0.5, (1 - alpha) ** 0.5
        prediction = self.config.prediction_type
        x0 = sampling.x0_from_roots_vp(model_output, sample, sqrt_alpha, sqrt_one_minus, prediction)
        eps = sampling.eps_from_roots_vp(model_output, sample, sqrt_alpha, sqrt_one_minus, prediction)
        x0 = self._clip_or_threshold(x0)
        if use_clipped_model_output:
            eps = (sample - sqrt_alpha * x0) / sqrt_one_minus
        return sampling.ddim_step(x0, eps, alpha_prev, 0.0)
