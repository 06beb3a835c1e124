"""PNDM: pseudo numerical methods for diffusion models (Liu et al. 2022).

Runge-Kutta warm-up steps (``prk``) then fourth-order linear multistep steps (``plms``), both
applied through the PNDM transfer function. ``skip_prk_steps`` starts with the multistep warm-up
of the PLMS sampler used by Stable Diffusion instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput

from . import sampling
from ._base import KARRAS_COMPATIBLES, Generator, TrainedBetas, VPScheduler
from .schedules import TimestepSpacing

__all__ = ["PNDMScheduler"]


def _adams_bashforth(ets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Linear multistep combination of the last (up to four) noise estimates (PNDM eq. 12).

    Evaluated left to right as written, updating one buffer in place (the same rounding).
    """
    if len(ets) == 2:
        return (3 * ets[-1]).sub_(ets[-2]).div_(2)
    if len(ets) == 3:
        return (23 * ets[-1]).sub_(16 * ets[-2]).add_(5 * ets[-3]).div_(12)
    return (55 * ets[-1]).sub_(59 * ets[-2]).add_(37 * ets[-3]).sub_(9 * ets[-4]).mul_(1 / 24)


class PNDMScheduler(VPScheduler):
    """Pseudo linear multistep sampling; 4th-order Runge-Kutta warm-up unless ``skip_prk_steps``."""

    _compatibles: ClassVar[tuple[str, ...]] = KARRAS_COMPATIBLES
    order: ClassVar[int] = 1
    pndm_order: ClassVar[int] = 4

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        trained_betas: TrainedBetas = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: Literal["epsilon", "v_prediction"] = "epsilon",
        timestep_spacing: TimestepSpacing = "leading",
        steps_offset: int = 0,
    ) -> None:
        self._init_training_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self._transfer: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self._timesteps = np.arange(0, num_train_timesteps)[::-1].copy()
        self.prk_timesteps = np.array([], dtype=np.int64)
        self.plms_timesteps = np.array([], dtype=np.int64)
        self.timesteps = torch.from_numpy(self._timesteps.copy())
        self._clear_state()

    def _clear_state(self) -> None:
        self.ets: list[torch.Tensor] = []
        self.counter = 0
        self.cur_model_output: Any = 0
        self.cur_sample: torch.Tensor | None = None

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Build the Runge-Kutta warm-up timesteps (unless skipped) followed by the multistep ones."""
        self._check_set_timesteps_args(
            num_inference_steps, timesteps, sigmas, accepts_timesteps=False, accepts_sigmas=False
        )
        n = self._required_steps(type(self).__name__, num_inference_steps)
        cfg = self.config
        self.num_inference_steps = n
        ascending = self._spaced_timesteps(n)[::-1].copy()
        self._timesteps = ascending
        if cfg.skip_prk_steps:
            # PLMS warm-up: the second-to-last step is taken twice (a Heun-like start)
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1].copy()
        else:
            if n < self.pndm_order:
                raise ValueError(
                    f"PNDMScheduler: with Runge-Kutta warm-up steps num_inference_steps must be at least "
                    f"{self.pndm_order}, got {n}; pass more steps or use skip_prk_steps=True"
                )
            half = cfg.num_train_timesteps // n // 2
            prk = np.array(ascending[-self.pndm_order :]).repeat(2) + np.tile(np.array([0, half]), self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = ascending[:-3][::-1].copy()
        ts = np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)
        self.timesteps = torch.from_numpy(ts).to(device)
        self._clear_state()
        self._reset_step_state()

    def _step_pairs(self) -> list[tuple[int, int]]:
        stride = self._stride()
        pairs = [(t, t - d) for t in self._positions for d in (stride, stride // 2, 0)]
        # the repeated first step of the PLMS warm-up
        pairs += [(t + stride, t) for t in self._positions if t + stride < self.config.num_train_timesteps]
        for t, prev_t in pairs:
            self._transfer_constants(t, prev_t)
        return pairs

    def _transfer_constants(self, t: int, prev_t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cached = self._transfer.get((t, prev_t))
        if cached is None:
            coefficients = sampling.pndm_transfer_coefficients(self._alpha_at(t), self._alpha_at(prev_t))
            cached = self._transfer[(t, prev_t)] = coefficients
        return cached

    def _prev_sample(
        self, sample: torch.Tensor, timestep: Any, prev_timestep: Any, model_output: torch.Tensor
    ) -> torch.Tensor:
        t, prev_t = int(timestep), int(prev_timestep)
        if self.config.prediction_type == "v_prediction":
            _, sqrt_alpha, sqrt_one_minus_alpha = self._roots(t)
            model_output = sampling.eps_from_roots_vp(
                model_output, sample, sqrt_alpha, sqrt_one_minus_alpha, "v_prediction"
            )
        elif self.config.prediction_type != "epsilon":
            raise ValueError(
                f"PNDM supports prediction_type 'epsilon' or 'v_prediction', not {self.config.prediction_type!r}"
            )
        return sampling.pndm_transfer_from_coefficients(sample, model_output, *self._transfer_constants(t, prev_t))

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
        """One Runge-Kutta stage or one multistep step, depending on progress; deterministic."""
        self._require_timesteps()
        index = self._ensure_step_index(timestep)
        self._position(timestep)
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            prev = self._prk(model_output, timestep, sample)
        else:
            prev = self._plms(model_output, timestep, sample)
        self._step_index = index + 1
        return self._output(prev, None, return_dict)

    def step_prk(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """A stage of the 4th-order Runge-Kutta warm-up (PNDM eq. 13): stages weighted 1/6, 1/3, 1/3, 1/6.

        :raises SchedulerNotReadyError: before ``set_timesteps``.
        """
        self._require_timesteps()
        return self._output(self._prk(model_output, timestep, sample), None, return_dict)

    def step_plms(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, return_dict: bool = True
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """A linear multistep step (PNDM eq. 12) on the last noise estimates.

        :raises SchedulerNotReadyError: before ``set_timesteps``.
        :raises ValueError: when the Runge-Kutta warm-up (``skip_prk_steps=False``) has not run first.
        """
        self._require_timesteps()
        return self._output(self._plms(model_output, timestep, sample), None, return_dict)

    def _stride(self) -> int:
        return int(self.config.num_train_timesteps // (self.num_inference_steps or self.config.num_train_timesteps))

    def _prk(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
        if self.counter >= len(self.prk_timesteps):
            raise ValueError(
                "PNDMScheduler.step_prk: the Runge-Kutta warm-up is over (or skip_prk_steps=True); "
                "call step() or step_plms()"
            )
        timestep = self._timestep_value(timestep)
        stage = self.counter % 4
        diff_to_prev = 0 if self.counter % 2 else self._stride() // 2
        prev_timestep = timestep - diff_to_prev
        timestep = self.prk_timesteps[self.counter // 4 * 4]
        if stage == 0:
            self.cur_model_output += 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output += 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        self.counter += 1
        return self._prev_sample(cur_sample, timestep, prev_timestep, model_output)

    def _plms(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError(
                "PNDMScheduler: the multistep stage needs the Runge-Kutta warm-up first; step through "
                "scheduler.timesteps in order with step() (or use skip_prk_steps=True)"
            )
        timestep = self._timestep_value(timestep)
        stride = self._stride()
        prev_timestep = timestep - stride
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:  # second call of the PLMS warm-up: redo the first step with the averaged estimate
            prev_timestep = timestep
            timestep = timestep + stride
        if len(self.ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            model_output = (model_output + self.ets[-1]) / 2
            if self.cur_sample is None:
                raise ValueError("PNDMScheduler: the PLMS warm-up lost its first sample; call set_timesteps again")
            sample, self.cur_sample = self.cur_sample, None
        else:
            model_output = _adams_bashforth(self.ets)
        self.counter += 1
        return self._prev_sample(sample, timestep, prev_timestep, model_output)
