"""Plumbing shared by the scheduler classes: state, step-index tracking and the common checks.

A scheduler class is a thin typed holder of config and state; it inherits the bookkeeping from
:class:`BaseScheduler` and calls the pure functions in :mod:`.schedules` and :mod:`.sampling`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from difflux.config import Bound
from difflux.errors import DiffluxError
from difflux.schedulers import SchedulerMixin, SchedulerOutput

from . import sampling, schedules

__all__ = [
    "KARRAS_COMPATIBLES",
    "SIGMA_RAMPS",
    "BaseScheduler",
    "Generator",
    "SchedulerNotReadyError",
    "SigmaScheduler",
    "TrainedBetas",
    "VPScheduler",
    "custom_array",
]

#: A list of betas in a config (``trained_betas``).
TrainedBetas = Sequence[float] | np.ndarray | None
Generator = torch.Generator | list[torch.Generator] | None

#: The config flags that replace the interpolated sigmas by a ramp (at most one may be on).
SIGMA_RAMPS: tuple[str, ...] = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

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


_POSITIVE = Bound(gt=0)
_NON_NEGATIVE = Bound(ge=0)

#: Ranges of this plugin's config keys, on top of those the core's ``SchedulerMixin`` declares
#: (every value finite unless ``allow_inf``; NaN is refused everywhere).
SCHEDULER_BOUNDS: Mapping[str, Bound | None] = {
    "dynamic_thresholding_ratio": Bound(gt=0, le=1),
    "shift_terminal": Bound(gt=0, lt=1),
    **dict.fromkeys(
        ("clip_sample_range", "sample_max_value", "sigma_max", "sigma_data", "rho", "shift", "flow_shift"), _POSITIVE
    ),
    "sampling_eps": Bound(gt=0, le=1),
    **dict.fromkeys(("sigma_min", "eta", "s_churn", "s_noise", "s_min", "s_max", "snr"), _NON_NEGATIVE),
    "s_tmax": Bound(ge=0, allow_inf=True),
    "s_tmin": _NON_NEGATIVE,
    **dict.fromkeys(("base_shift", "max_shift", "timestep_scaling"), Bound()),
    "lambda_min_clipped": Bound(allow_inf=True),
    **dict.fromkeys(("base_image_seq_len", "max_image_seq_len"), Bound(ge=1, le=2**24)),
    "solver_order": Bound(ge=1, le=3),
    "correct_steps": Bound(ge=0, le=1000),
    "disable_corrector": Bound(ge=0, le=10**6, max_items=10**6),
}


class SchedulerNotReadyError(DiffluxError, RuntimeError):
    """A scheduler was used before ``set_timesteps`` gave it a schedule."""


def custom_array(values: Sequence[Any] | torch.Tensor | np.ndarray, what: str, owner: str) -> np.ndarray:
    """Custom ``timesteps=`` / ``sigmas=`` (a list, numpy array or tensor on any device) as a 1-D float64 array.

    :raises ValueError: if the values are empty, not one-dimensional, or not finite.
    """
    if isinstance(values, torch.Tensor):
        array = values.detach().to("cpu", torch.float64).numpy()
    else:
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{owner}.set_timesteps: {what}= must be a list of numbers, got {values!r}") from None
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{owner}.set_timesteps: {what}= must be a non-empty 1-D list, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{owner}.set_timesteps: {what}= must be finite, got {array.tolist()}")
    return array


class BaseScheduler(SchedulerMixin):
    """State and checks every discrete-time scheduler shares.

    Subclasses set ``self.timesteps`` (a tensor) in ``set_timesteps`` and call
    :meth:`_reset_step_state` there; ``step`` calls :meth:`_require_timesteps` first.
    """

    config_bounds: ClassVar[Mapping[str, Bound | None]] = SCHEDULER_BOUNDS

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
        *,
        finite_terminal_snr: bool = False,
    ) -> None:
        """Set ``betas``, ``alphas`` and ``alphas_cumprod`` from the config.

        With ``finite_terminal_snr`` a zero terminal SNR (``rescale_betas_zero_snr``) is clamped to
        alpha_bar_T = 2^-24, for samplers whose largest sigma or log-SNR must stay finite.
        """
        betas = schedules.make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        if rescale_betas_zero_snr:
            betas = schedules.rescale_zero_terminal_snr(betas)
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = schedules.alphas_cumprod_from_betas(betas)
        if rescale_betas_zero_snr and finite_terminal_snr:
            self.alphas_cumprod[-1] = 2**-24

    def _check_one_sigma_ramp(self) -> None:
        """At most one of the Karras / exponential / beta sigma ramps may be switched on."""
        if sum(bool(self.config.get(k)) for k in SIGMA_RAMPS) > 1:
            raise ValueError(
                f"{type(self).__name__}: {', '.join(SIGMA_RAMPS)} exclude each other; set at most one "
                "(use only one of them)"
            )

    # -- step index -------------------------------------------------------------------------

    @property
    def step_index(self) -> int | None:
        """Index into the schedule of the next ``step`` (``None`` until the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The schedule index of the first ``step`` when a pipeline set it (image-to-image starts part-way)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start stepping at ``self.timesteps[begin_index]`` (call after ``set_timesteps``, before the first step).

        The step index then counts from ``begin_index``, one per ``step`` call, whatever the
        timestep values are (they may repeat). For a second-order scheduler (``order == 2``),
        ``begin_index`` must be the first call of a step (an even offset into the interleaved part).

        :raises ValueError: if ``begin_index`` is not an int in ``[0, len(self.timesteps))``.
        """
        if isinstance(begin_index, bool) or not isinstance(begin_index, (int, np.integer)):
            raise ValueError(f"{type(self).__name__}.set_begin_index: begin_index must be an int, got {begin_index!r}")
        size = len(self.timesteps)
        if not 0 <= begin_index < max(size, 1):
            raise ValueError(
                f"{type(self).__name__}.set_begin_index: begin_index={begin_index} is outside the schedule of "
                f"{size} timesteps; pass an index into scheduler.timesteps"
            )
        self._begin_index = int(begin_index)

    def _reset_step_state(self) -> None:
        self._step_index = None
        self._begin_index = None

    #: whether ``step`` works before ``set_timesteps``, on the training schedule held since ``__init__``
    #: (the schedulers whose Diffusers counterparts allow it)
    _steps_on_training_schedule: ClassVar[bool] = False

    def _prepare_training_schedule(self) -> None:
        """Build the per-step tables of the training schedule held since ``__init__`` (first ``step``)."""

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is not None:
            return
        if self._steps_on_training_schedule:
            self._prepare_training_schedule()
            return
        raise SchedulerNotReadyError(
            f"{type(self).__name__}: no schedule yet; call set_timesteps(num_inference_steps) before "
            "step() or scale_model_input()"
        )

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule (the second match when it appears more than once).

        Taking the second match means a loop started part-way through an interleaved second-order
        schedule (``[t0, t1, t1, t2, t2, ...]``) starts at the first call of a step.

        :raises ValueError: if ``timestep`` is not in the schedule.
        """
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
        """The index of the first step: the begin index when set, else 0 for ``timesteps[0]`` (values can
        repeat at the start, e.g. Karras sigmas on a cosine schedule), else the look-up."""
        if self._begin_index is not None:
            self._step_index = self._begin_index
            return
        schedule = self.timesteps
        first = schedule[0] if len(schedule) else None
        if first is not None and bool(
            first == (timestep.to(schedule.device) if isinstance(timestep, torch.Tensor) else timestep)
        ):
            self._step_index = 0
        else:
            self._step_index = self.index_for_timestep(timestep)

    def _ensure_step_index(self, timestep: float | torch.Tensor) -> int:
        """The index of this ``step``: counted from the first step (see :meth:`_init_step_index`).

        :raises IndexError: when called more often than the schedule has steps.
        """
        if self._step_index is None:
            self._init_step_index(timestep)
        index = self._step_index
        if index is None or index >= len(self.timesteps):
            raise IndexError(
                f"{type(self).__name__}: step {index} is past the end of the schedule of {len(self.timesteps)} "
                "timesteps; call set_timesteps again before another loop"
            )
        return index

    def _timestep_value(self, timestep: float | torch.Tensor) -> int:
        """``int(timestep)``, read from a host copy of the schedule when ``timestep`` is an element of
        ``self.timesteps`` (what ``for t in scheduler.timesteps`` yields, a view into it): a loop on a GPU then
        never waits for the device in ``step``, so the host queues the next denoiser call (a CUDA-graph replay)
        while the current one runs. Any other value (a Python number, a tensor built elsewhere) is read as is.
        """
        if isinstance(timestep, torch.Tensor):
            index = self._schedule_view_index(timestep)
            if index is not None:
                return self._host_timesteps()[index]
        return int(timestep)

    def _schedule_view_index(self, timestep: torch.Tensor) -> int | None:
        """The index of ``timestep`` in ``self.timesteps`` when it is a 0-d view into that tensor, else ``None``."""
        schedule = getattr(self, "timesteps", None)
        if (
            not isinstance(schedule, torch.Tensor)
            or schedule.dim() != 1
            or timestep.dim() != 0
            or timestep.dtype != schedule.dtype
            or timestep.device != schedule.device
            or schedule.stride(0) <= 0
            or timestep.untyped_storage().data_ptr() != schedule.untyped_storage().data_ptr()
        ):
            return None
        index, rest = divmod(int(timestep.storage_offset()) - int(schedule.storage_offset()), int(schedule.stride(0)))
        return index if rest == 0 and 0 <= index < schedule.shape[0] else None

    def _host_timesteps(self) -> list[int]:
        """``self.timesteps`` as Python ints, refreshed when the tensor is replaced or changed in place."""
        schedule: torch.Tensor = self.timesteps  # type: ignore[attr-defined]
        key = (id(schedule), schedule._version)
        cached = getattr(self, "_host_schedule", None)
        if cached is None or cached[0] != key:
            cached = self._host_schedule = (key, [int(t) for t in schedule.tolist()])
        return cached[1]

    def _count_step(self, timestep: float | torch.Tensor) -> None:
        """Advance the step index of a scheduler whose maths do not use it (DDIM, DDPM): it counts too
        (without an end, since such a ``step`` may be called any number of times)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        self._step_index = (self._step_index or 0) + 1

    def _steps(self) -> int:
        """``num_inference_steps`` (the number of training timesteps before ``set_timesteps``)."""
        return int(self.num_inference_steps or self.config.num_train_timesteps)

    def _check_in_schedule(self, timestep: float | torch.Tensor) -> None:
        """Raise a clear ``ValueError`` unless ``timestep`` is one of ``self.timesteps``."""
        self.index_for_timestep(timestep)

    def _reject_integer_timestep(self, timestep: float | torch.Tensor) -> None:
        """Schedulers with fractional timesteps: an integer is almost surely a loop index, not a timestep."""
        if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
            raise ValueError(
                f"{type(self).__name__}.step got an integer timestep; pass an element of scheduler.timesteps, "
                "not a loop index"
            )

    def _noise_level_indices(self, timesteps: torch.Tensor) -> list[int]:
        """Schedule positions for ``add_noise``-style calls: looked up per timestep, or the current / begin
        index once a pipeline set ``begin_index`` (image-to-image)."""
        timesteps = timesteps.reshape(-1)
        if self._begin_index is None:
            schedule = self.timesteps.to(timesteps.device)
            return [self.index_for_timestep(t, schedule) for t in timesteps]
        index = self._step_index if self._step_index is not None else self._begin_index
        return [index] * len(timesteps)

    def _sigmas_at(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``self.sigmas`` at the schedule positions of ``timesteps`` (one per sample), on ``like``'s device/dtype."""
        sigmas: torch.Tensor = self.sigmas.to(device=like.device, dtype=like.dtype)  # type: ignore[attr-defined]
        return sigmas[self._noise_level_indices(timesteps.to(like.device))]

    # -- set_timesteps arguments ----------------------------------------------------------

    def _check_set_timesteps_args(
        self,
        num_inference_steps: int | None,
        timesteps: Sequence[Any] | torch.Tensor | np.ndarray | None,
        sigmas: Sequence[Any] | torch.Tensor | np.ndarray | None,
        *,
        accepts_timesteps: bool = True,
        accepts_sigmas: bool = True,
    ) -> None:
        """Check the arguments of ``set_timesteps`` (custom lists may be lists, arrays or tensors).

        :raises ValueError: on a missing / doubled argument, an unsupported custom list, a wrong step
            count, or a custom list that is empty, not 1-D, or not finite.
        """
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
        if timesteps is not None:
            custom_array(timesteps, "timesteps", name)
        if sigmas is not None and len(custom_array(sigmas, "sigmas", name)) < 2:
            raise ValueError(f"{name}.set_timesteps: sigmas= needs at least two values (the last is the final sigma)")

    @staticmethod
    def _required_steps(name: str, num_inference_steps: int | None) -> int:
        """``num_inference_steps`` once the arguments were checked (a clear error if it is missing)."""
        if num_inference_steps is None:
            raise ValueError(f"{name}.set_timesteps: pass num_inference_steps")
        return int(num_inference_steps)

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
    """A scheduler over a variance-preserving training schedule (``alphas_cumprod``).

    Per-timestep constants are cached as 0-dim float32 tensors (:meth:`_roots`): the same rounding as
    computing them in each step, without the per-step tensor work; the schedule position of a timestep
    is a dict look-up (:meth:`_position`), with the search and its clear error only on a miss.
    """

    alphas_cumprod: torch.Tensor
    #: alpha_bar of a step that ends before the first training timestep (t < 0)
    final_alpha_cumprod: torch.Tensor
    _positions: dict[int, int] = {}

    def _init_training_schedule(self, *args: Any, **kwargs: Any) -> None:
        super()._init_training_schedule(*args, **kwargs)
        self._root_cache: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _alpha_at(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def _roots(self, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a_t, sqrt(a_t), sqrt(1 - a_t))`` at integer timestep ``t`` (``final_alpha_cumprod`` below 0)."""
        roots = self._root_cache.get(t)
        if roots is None:
            a = self._alpha_at(t)
            roots = self._root_cache[t] = (a, a**0.5, (1 - a) ** 0.5)
        return roots

    def _reset_step_state(self) -> None:
        super()._reset_step_state()
        self._positions = {t: i for i, t in enumerate(self.timesteps.tolist())}
        for t, prev_t in self._step_pairs():  # fill the caches now, so that no step computes constants
            self._roots(t)
            self._roots(prev_t)

    def _step_pairs(self) -> list[tuple[int, int]]:
        """``(t, t_prev)`` of every step of the schedule (default: a stride of ``T // n`` down)."""
        stride = self.config.num_train_timesteps // (self.num_inference_steps or self.config.num_train_timesteps)
        return [(t, t - stride) for t in self._positions]

    def _position(self, timestep: int | torch.Tensor) -> int:
        """Index of ``timestep`` in the schedule (raises the ``not in the schedule`` error if it is not)."""
        if isinstance(timestep, float) or (isinstance(timestep, torch.Tensor) and timestep.is_floating_point()):
            return self.index_for_timestep(timestep)
        pos = self._positions.get(self._timestep_value(timestep))
        return self.index_for_timestep(timestep) if pos is None else pos

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The timestep after ``timestep`` in the schedule (``-1`` after the last; ``timestep - 1`` on the
        training schedule before ``set_timesteps``).

        :raises ValueError: if ``timestep`` is not in the schedule.
        """
        if self.num_inference_steps is None:
            return torch.as_tensor(timestep) - 1
        index = self._position(timestep)
        if index == self.timesteps.shape[0] - 1:
            return torch.tensor(-1)
        return self.timesteps[index + 1]

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise ``original_samples`` to the training timesteps ``timesteps`` (one per sample)."""
        return sampling.add_noise_vp(original_samples, noise, self.alphas_cumprod, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction training target for ``sample`` noised with ``noise`` at ``timesteps``."""
        return sampling.velocity_vp(sample, noise, self.alphas_cumprod, timesteps)

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """VP samplers feed the sample to the model unchanged."""
        return sample

    def _spaced_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """Descending int64 timesteps per ``timestep_spacing`` and ``steps_offset``."""
        cfg = self.config
        return schedules.spaced_timesteps(
            num_inference_steps, cfg.num_train_timesteps, cfg.timestep_spacing, cfg.steps_offset
        )

    def _clip_or_threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding or clipping of a clean-sample estimate, per config."""
        cfg = self.config
        return sampling.clip_or_threshold(
            x0,
            thresholding=cfg.get("thresholding", False),
            clip_sample=cfg.clip_sample,
            clip_sample_range=cfg.clip_sample_range,
            dynamic_thresholding_ratio=cfg.get("dynamic_thresholding_ratio", 0.995),
            sample_max_value=cfg.get("sample_max_value", 1.0),
        )


class SigmaScheduler(BaseScheduler):
    """A k-diffusion style scheduler: steps in sigma = sqrt((1 - a) / a), model input scaled by 1/sqrt(sigma^2 + 1)."""

    sigmas: torch.Tensor
    alphas_cumprod: torch.Tensor
    _steps_on_training_schedule: ClassVar[bool] = True
    _training_tables: bool = False

    def _prepare_training_schedule(self) -> None:
        if not self._training_tables:
            self._on_new_schedule()
            self._training_tables = True

    def _training_sigmas(self) -> np.ndarray:
        return schedules.sigmas_from_alphas_cumprod(self.alphas_cumprod).numpy()

    def _init_sigmas(self) -> None:
        """The training sigmas, descending, and a final 0 (no schedule yet)."""
        self._check_one_sigma_ramp()
        self.sigmas = schedules.with_final_sigma(self._training_sigmas()[::-1])
        self.num_inference_steps = None

    def _on_new_schedule(self) -> None:
        """Forget the state kept for a previous schedule (none here) and prepare per-step constants."""

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """Space ``num_inference_steps`` timesteps per config (custom lists are not supported)."""
        self._check_set_timesteps_args(
            num_inference_steps, timesteps, sigmas, accepts_timesteps=False, accepts_sigmas=False
        )
        num_inference_steps = self._required_steps(type(self).__name__, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        ts, sig, _ = self._spaced_sigmas(num_inference_steps)
        self.sigmas = schedules.with_final_sigma(sig)
        self.timesteps = torch.from_numpy(np.asarray(ts)).to(device=device, dtype=torch.float32)
        self._on_new_schedule()
        self._reset_step_state()

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
        self._check_one_sigma_ramp()
        cfg = self.config
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
        for key in SIGMA_RAMPS:
            if self.config.get(key):
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
        return sampling.add_noise_sigma(original_samples, noise, self._sigmas_at(timesteps, original_samples))
