"""Plumbing shared by the scheduler classes: state, step-index tracking and the common checks.

A scheduler class is a thin typed holder of config and state; it inherits the bookkeeping from
:class:`BaseScheduler` and calls the pure functions in :mod:`.schedules` and :mod:`.sampling`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from difflux.errors import DiffluxError
from difflux.schedulers import SchedulerMixin, SchedulerOutput

from . import sampling, schedules

__all__ = [
    "KARRAS_COMPATIBLES",
    "BaseScheduler",
    "Generator",
    "SchedulerNotReadyError",
    "SigmaScheduler",
    "TrainedBetas",
    "VPScheduler",
]

#: A list of betas in a config (``trained_betas``).
TrainedBetas = Sequence[float] | np.ndarray | None
Generator = torch.Generator | list[torch.Generator] | None

#: The Diffusers "Karras diffusion" family: each of these loads the others' configs.
KARRAS_COMPATIBLES: tuple[str, ...] = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)


class SchedulerNotReadyError(DiffluxError, RuntimeError):
    """A scheduler was used before ``set_timesteps`` gave it a schedule."""


class BaseScheduler(SchedulerMixin):
    """State and checks every discrete-time scheduler shares.

    Subclasses set ``self.timesteps`` (a tensor) in ``set_timesteps`` and call
    :meth:`_reset_step_state` there; ``step`` calls :meth:`_require_timesteps` first.
    """

    timesteps: torch.Tensor
    num_inference_steps: int | None = None
    _step_index: int | None = None
    _begin_index: int | None = None

    # -- the training noise schedule ------------------------------------------------------

    def _init_training_schedule(
        self,
        num_train_timesteps: int,
        beta_start: float,
        beta_end: float,
        beta_schedule: str,
        trained_betas: TrainedBetas,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        """Set ``betas``, ``alphas`` and ``alphas_cumprod`` from the config."""
        betas = schedules.make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        if rescale_betas_zero_snr:
            betas = schedules.rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = schedules.alphas_cumprod_from_betas(betas)

    # -- step index -------------------------------------------------------------------------

    @property
    def step_index(self) -> int | None:
        """Index into the schedule of the next ``step`` (``None`` until the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The index of the first step, when a pipeline set it (img2img starts part-way)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start stepping at ``begin_index`` of the schedule (call before the first step)."""
        self._begin_index = begin_index

    def _reset_step_state(self) -> None:
        self._step_index = None
        self._begin_index = None

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise SchedulerNotReadyError(
                f"{type(self).__name__}: no schedule yet; call set_timesteps(num_inference_steps) before "
                "step() or scale_model_input()"
            )

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule (the second match when it appears twice)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        if isinstance(timestep, torch.Tensor):
            timestep = timestep.to(schedule.device)
        indices = (schedule == timestep).nonzero()
        if len(indices) == 0:
            value = timestep.item() if isinstance(timestep, torch.Tensor) else timestep
            raise ValueError(
                f"{type(self).__name__}: timestep {value} is not in the schedule set by set_timesteps "
                f"({schedule.tolist()}); pass one of scheduler.timesteps"
            )
        pos = 1 if len(indices) > 1 else 0
        return int(indices[pos].item())

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _ensure_step_index(self, timestep: float | torch.Tensor) -> int:
        if self._step_index is None:
            self._init_step_index(timestep)
        assert self._step_index is not None
        return self._step_index

    def _check_in_schedule(self, timestep: float | torch.Tensor) -> None:
        """Raise a clear ``ValueError`` unless ``timestep`` is one of ``self.timesteps``."""
        self.index_for_timestep(timestep)

    # -- set_timesteps arguments ----------------------------------------------------------

    def _check_set_timesteps_args(
        self,
        num_inference_steps: int | None,
        timesteps: Sequence[Any] | None,
        sigmas: Sequence[Any] | None,
        *,
        accepts_timesteps: bool = True,
        accepts_sigmas: bool = True,
    ) -> None:
        name = type(self).__name__
        if timesteps is not None and not accepts_timesteps:
            raise ValueError(f"{name}.set_timesteps does not take custom timesteps=; pass num_inference_steps")
        if sigmas is not None and not accepts_sigmas:
            raise ValueError(f"{name}.set_timesteps does not take custom sigmas=; pass num_inference_steps")
        given = sum(x is not None for x in (num_inference_steps, timesteps, sigmas))
        if given != 1:
            raise ValueError(f"{name}.set_timesteps: pass exactly one of num_inference_steps, timesteps= or sigmas=")
        if num_inference_steps is not None:
            schedules.check_num_inference_steps(num_inference_steps, self.config.get("num_train_timesteps"))
        if timesteps is not None and len(timesteps) < 1:
            raise ValueError(f"{name}.set_timesteps: timesteps= is empty")
        if sigmas is not None and len(sigmas) < 2:
            raise ValueError(f"{name}.set_timesteps: sigmas= needs at least two values (the last is the final sigma)")

    # -- output -------------------------------------------------------------------------------

    @staticmethod
    def _output(
        prev_sample: torch.Tensor, pred_original_sample: torch.Tensor | None, return_dict: bool
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        if not return_dict:
            return (prev_sample,) if pred_original_sample is None else (prev_sample, pred_original_sample)
        return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def __len__(self) -> int:
        return int(self.config.get("num_train_timesteps", 0))


class VPScheduler(BaseScheduler):
    """A scheduler over a variance-preserving training schedule (``alphas_cumprod``)."""

    alphas_cumprod: torch.Tensor

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise ``original_samples`` to the training timesteps ``timesteps`` (one per sample)."""
        return sampling.add_noise_vp(original_samples, noise, self.alphas_cumprod, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction training target for ``sample`` noised with ``noise`` at ``timesteps``."""
        return sampling.velocity_vp(sample, noise, self.alphas_cumprod, timesteps)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """VP samplers feed the sample to the model unchanged."""
        return sample


class SigmaScheduler(BaseScheduler):
    """A k-diffusion style scheduler: steps in sigma = sqrt((1 - a) / a), model input scaled by 1/sqrt(sigma^2 + 1)."""

    sigmas: torch.Tensor
    alphas_cumprod: torch.Tensor

    def _training_sigmas(self) -> np.ndarray:
        return schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod).numpy()

    def _spaced_sigmas(
        self, num_inference_steps: int, timesteps: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(timesteps, sigmas, training log-sigmas) for ``num_inference_steps``, per config.

        Timesteps are spaced per ``timestep_spacing`` (float32) unless given; sigmas are
        interpolated at them, then replaced by a Karras / exponential / beta ramp when configured
        (and the timesteps recomputed from those sigmas).
        """
        cfg = self.config
        if timesteps is None:
            timesteps = schedules.spaced_timesteps(
                num_inference_steps, cfg.num_train_timesteps, cfg.timestep_spacing, cfg.steps_offset, integer=False
            )
        train_sigmas = self._training_sigmas()
        log_sigmas = np.log(train_sigmas)
        sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
        ramp = self._sigma_ramp(sigmas, num_inference_steps)
        if ramp is not None:
            sigmas = ramp
            timesteps = schedules.sigma_to_t(sigmas, log_sigmas)
        return timesteps, sigmas, log_sigmas

    def _sigma_ramp(self, sigmas: np.ndarray, num_inference_steps: int) -> np.ndarray | None:
        cfg = self.config
        if sum(bool(cfg.get(k)) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")) > 1:
            raise ValueError(
                f"{type(self).__name__}: use at most one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas"
            )
        lo = cfg.get("sigma_min")
        hi = cfg.get("sigma_max")
        lo = float(sigmas[-1]) if lo is None else lo
        hi = float(sigmas[0]) if hi is None else hi
        if cfg.get("use_karras_sigmas"):
            return schedules.karras_sigmas(lo, hi, num_inference_steps)
        if cfg.get("use_exponential_sigmas"):
            return schedules.exponential_sigmas(lo, hi, num_inference_steps)
        if cfg.get("use_beta_sigmas"):
            return schedules.beta_sigmas(lo, hi, num_inference_steps)
        return None

    def _check_custom_timesteps_allowed(self) -> None:
        cfg = self.config
        for key in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
            if cfg.get(key):
                raise ValueError(f"{type(self).__name__}: custom timesteps= cannot be combined with {key}=True")

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Standard deviation of the initial noise: the largest sigma (with unit variance added for leading)."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def _model_input_sigma(self, step_index: int) -> torch.Tensor:
        return self.sigmas[step_index]

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """Divide by sqrt(sigma^2 + 1), so the model sees a unit-variance input (Karras et al. 2022, c_in)."""
        self._require_timesteps()
        index = self._ensure_step_index(timestep)
        sigma = self._model_input_sigma(index)
        return sample / ((sigma**2 + 1) ** 0.5)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise ``original_samples`` to the sigmas of ``timesteps`` (schedule timesteps, one per sample)."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        schedule = self.timesteps.to(original_samples.device)
        timesteps = timesteps.to(original_samples.device)
        if self._begin_index is None:
            indices = [self.index_for_timestep(t, schedule) for t in timesteps]
        elif self._step_index is not None:
            indices = [self._step_index] * timesteps.shape[0]
        else:
            indices = [self._begin_index] * timesteps.shape[0]
        return sampling.add_noise_sigma(original_samples, noise, sigmas[indices])
