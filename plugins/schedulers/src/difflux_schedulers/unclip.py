"""unCLIP's DDPM variant (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with
CLIP Latents"; the Karlo prior and decoder schedules).

A DDPM ancestral sampler on the squared-cosine training schedule (Nichol & Dhariwal 2021) with two
differences from :class:`~difflux_schedulers.ddpm.DDPMScheduler`: the inference timesteps are
``round(i * (T - 1) / (n - 1))`` (first and last training timesteps both included), and a step that
skips timesteps recomputes its beta from the two ``alpha_bar`` values (``1 - a_t / a_prev``);
``learned_range`` interpolates log-variances between that beta and the posterior variance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput
from difflux.torch_utils import randn_tensor

from ._base import Generator, VPScheduler

__all__ = ["UnCLIPScheduler", "unclip_timesteps"]


def unclip_timesteps(num_inference_steps: int, num_train_timesteps: int) -> np.ndarray:
    """Descending int64 timesteps ``round(i * (T - 1) / (n - 1))``, ``i = n - 1 .. 0``."""
    ratio = (num_train_timesteps - 1) / (num_inference_steps - 1)
    return (np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64)


class UnCLIPScheduler(VPScheduler):
    """The unCLIP (Karlo) DDPM sampler; config keys as Diffusers' ``UnCLIPScheduler``.

    ``step(model_output, timestep, sample, prev_timestep=None, generator=None)``: the unCLIP
    pipelines pass ``prev_timestep``; without it the step goes to the next timestep of the schedule
    set by ``set_timesteps`` (Diffusers goes to ``timestep - 1`` then, a one-training-step move
    that is wrong inside an inference loop) or, before ``set_timesteps``, to ``timestep - 1``.
    """

    _steps_on_training_schedule = True
    _compatibles: ClassVar[tuple[str, ...]] = ("UnCLIPScheduler",)
    order: ClassVar[int] = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        variance_type: Literal["fixed_small_log", "learned_range"] = "fixed_small_log",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        prediction_type: Literal["epsilon", "sample"] = "epsilon",
        beta_schedule: Literal["squaredcos_cap_v2"] = "squaredcos_cap_v2",
    ) -> None:
        if beta_schedule != "squaredcos_cap_v2":
            raise ValueError(f"UnCLIPScheduler: beta_schedule must be 'squaredcos_cap_v2', got {beta_schedule!r}")
        self._init_training_schedule(num_train_timesteps, 0.0, 0.0, beta_schedule, None)
        self.one = self.final_alpha_cumprod = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
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
        """``num_inference_steps`` (at least 2) timesteps from ``T - 1`` down to 0, evenly spread and rounded."""
        self._check_set_timesteps_args(
            num_inference_steps, timesteps, sigmas, accepts_timesteps=False, accepts_sigmas=False
        )
        n = self._required_steps(type(self).__name__, num_inference_steps)
        if n < 2:
            raise ValueError(f"UnCLIPScheduler.set_timesteps needs num_inference_steps >= 2, got {n}")
        self.num_inference_steps = n
        self.timesteps = torch.from_numpy(unclip_timesteps(n, self.config.num_train_timesteps)).to(device)
        self._reset_step_state()

    def _step_pairs(self) -> list[tuple[int, int]]:
        ts = self.timesteps.tolist()
        return list(zip(ts, [*ts[1:], -1]))

    def _betas(self, t: int, prev_t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(beta, alpha)`` of the step from ``t`` to ``prev_t``: the trained ones for a one-step move,
        else ``1 - a_t / a_prev``."""
        if prev_t == t - 1:
            return self.betas[t], self.alphas[t]
        beta = 1 - self._alpha_at(t) / self._alpha_at(prev_t)
        return beta, 1 - beta

    def _get_variance(
        self,
        t: int,
        prev_timestep: int | None = None,
        predicted_variance: torch.Tensor | None = None,
        variance_type: str | None = None,
    ) -> torch.Tensor:
        """The std (``fixed_small_log``) or log-variance (``learned_range``) of the step's noise."""
        prev_t = t - 1 if prev_timestep is None else prev_timestep
        alpha_prod_t, alpha_prod_prev = self._alpha_at(t), self._alpha_at(prev_t)
        beta, _ = self._betas(t, prev_t)
        variance = (1 - alpha_prod_prev) / (1 - alpha_prod_t) * beta
        kind = variance_type or self.config.variance_type
        if kind == "fixed_small_log":
            return torch.exp(0.5 * torch.log(torch.clamp(variance, min=1e-20)))
        if kind == "learned_range":
            if predicted_variance is None:
                raise ValueError("UnCLIPScheduler: variance_type='learned_range' needs the predicted variance")
            frac = (predicted_variance + 1) / 2
            return frac * beta.log() + (1 - frac) * variance.log()
        raise ValueError(
            f"UnCLIPScheduler: unknown variance_type {kind!r}; expected 'fixed_small_log' or 'learned_range'"
        )

    def step(  # type: ignore[override]
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        prev_timestep: int | torch.Tensor | None = None,
        generator: Generator = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One ancestral DDPM step from ``timestep`` to ``prev_timestep`` (see the class docstring; ``eta`` is
        unused, accepted so that generic loops can pass it as to DDIM).

        ``model_output``: ``(B, C, ...)``, or ``(B, 2C, ...)`` with the predicted variance for ``learned_range``.
        """
        self._require_timesteps()
        t = self._timestep_value(timestep)
        if prev_timestep is None:
            prev_t = t - 1 if self.num_inference_steps is None else int(self.previous_timestep(t))
        else:
            prev_t = int(prev_timestep)
        self._count_step(timestep)
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type == "learned_range":
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        alpha_prod_t, alpha_prod_prev = self._alpha_at(t), self._alpha_at(prev_t)
        beta_prod_t, beta_prod_prev = 1 - alpha_prod_t, 1 - alpha_prod_prev
        beta, alpha = self._betas(t, prev_t)
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0 = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        elif kind == "sample":
            x0 = model_output
        else:
            raise ValueError(f"UnCLIPScheduler: prediction_type must be 'epsilon' or 'sample', got {kind!r}")
        if self.config.clip_sample:
            x0 = torch.clamp(x0, -self.config.clip_sample_range, self.config.clip_sample_range)
        # posterior mean (DDPM eq. 7)
        prev_sample = (
            alpha_prod_prev**0.5 * beta
        ) / beta_prod_t * x0 + alpha**0.5 * beta_prod_prev / beta_prod_t * sample
        if t > 0:
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            std = self._get_variance(t, prev_t, predicted_variance)
            if self.variance_type == "learned_range":
                std = (0.5 * std).exp()
            prev_sample = prev_sample + std * noise
        return self._output(prev_sample, x0, return_dict)
