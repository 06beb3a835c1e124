"""Flax schedulers: pure step functions over an explicit :class:`FlaxSchedulerState`.

Each Flax scheduler pairs with the PyTorch scheduler of ``difflux-schedulers`` of the same name
(``FlaxDDIMScheduler`` with ``DDIMScheduler`` ...). The host-side schedule (timesteps, sigmas,
per-step constants) is built once, in ``set_timesteps``, by that PyTorch scheduler, so both
frameworks run the same numbers; the per-step maths runs in JAX on arrays held in the state.
``step`` reads its constants at ``state.step_index`` and returns a new state, so a whole
denoising loop runs under :func:`jax.jit` with :func:`jax.lax.fori_loop`::

    scheduler = FlaxDDIMScheduler.from_config(config)
    state = scheduler.set_timesteps(scheduler.create_state(), 50, latents.shape)

    def body(i, carry):
        latents, state = carry
        t = state.timesteps[i]
        eps = unet(scheduler.scale_model_input(state, latents, t), t)
        out = scheduler.step(state, eps, t, latents)
        return out.prev_sample, out.state

    latents, state = jax.lax.fori_loop(0, len(state.timesteps), body, (latents, state))

Samplers: DDIM (Song et al. 2021), DDPM (Ho et al. 2020), PNDM / PLMS (Liu et al. 2022),
LMS (k-diffusion ``sample_lms``), Euler (Karras et al. 2022, Algorithm 2 without churn) and
DPM-Solver++ multistep (Lu et al. 2022, Algorithm 2; orders 1-3).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from difflux.registry import import_ref

__all__ = [
    "FlaxDDIMScheduler",
    "FlaxDDPMScheduler",
    "FlaxDPMSolverMultistepScheduler",
    "FlaxEulerDiscreteScheduler",
    "FlaxLMSDiscreteScheduler",
    "FlaxPNDMScheduler",
    "FlaxScheduler",
    "FlaxSchedulerOutput",
    "FlaxSchedulerState",
]


@flax.struct.dataclass
class FlaxSchedulerState:
    """Everything a Flax scheduler's ``step`` reads and updates (a pytree: pass it through ``jit``).

    :ivar timesteps: ``(num_calls,)`` the timesteps the model is called at, in order (int32 for the
        VP samplers, float32 for the sigma samplers).
    :ivar tables: per-call float32 constants, each ``(num_calls,)`` or ``(num_calls + 1,)``.
    :ivar buffers: multistep history (``(k, *sample_shape)`` arrays) and the sample kept by PLMS.
    :ivar step_index: int32 scalar, the index of the next ``step`` into ``timesteps``.
    :ivar init_noise_sigma: float32 scalar, the standard deviation of the initial noise.
    :ivar alphas_cumprod: ``(num_train_timesteps,)`` float32 alpha_bar of the training schedule.
    """

    timesteps: jax.Array
    tables: dict[str, jax.Array]
    buffers: dict[str, jax.Array]
    step_index: jax.Array
    init_noise_sigma: jax.Array
    alphas_cumprod: jax.Array
    num_inference_steps: int | None = flax.struct.field(pytree_node=False, default=None)


@flax.struct.dataclass
class FlaxSchedulerOutput:
    """``prev_sample`` (the sample's shape and dtype) and the updated ``state``."""

    prev_sample: jax.Array
    state: FlaxSchedulerState


#: ``draw()``: the step's noise, from ``noise=`` or drawn with ``key=`` (a ValueError when neither is given)
_Draw = Callable[[], jax.Array]
#: what a sampler's ``_update`` returns: ``prev_sample`` and the buffers it replaces
_Update = tuple[jax.Array, dict[str, jax.Array]]


def _f32(values: Any) -> jax.Array:
    return jnp.asarray(np.asarray(values, dtype=np.float32))


def _per_sample(values: jax.Array, like: jax.Array) -> jax.Array:
    """``(batch,)`` per-sample coefficients as ``(batch, 1, ..., 1)`` in ``like``'s dtype (to scale ``like``)."""
    return values.astype(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def _push(history: jax.Array, new: jax.Array) -> jax.Array:
    """``history`` (``(k, *shape)``, oldest first) without its oldest entry, ``new`` appended."""
    return jnp.concatenate([history[1:], new[None]], axis=0)


def _at(state: FlaxSchedulerState, name: str, like: jax.Array, offset: int = 0) -> jax.Array:
    """``state.tables[name][step_index + offset]`` in ``like``'s dtype."""
    return state.tables[name][state.step_index + offset].astype(like.dtype)


class FlaxScheduler(abc.ABC):
    """Base of the Flax schedulers: the config of the paired PyTorch scheduler and the shared plumbing.

    ``FlaxXScheduler(**config)`` and ``FlaxXScheduler.from_config(config)`` accept exactly the config
    keys of the PyTorch scheduler ``X`` (validated by it, same errors); ``save_pretrained`` writes
    ``scheduler_config.json`` with the PyTorch class name, so the folder stays loadable by both.

    A sampler supplies ``_tables`` (its per-step constants, built on the host), ``_update`` (the
    traced step: ``(prev_sample, buffers)``) and, when it keeps a history, ``_buffers``; ``step``
    is shared.
    """

    #: the paired PyTorch scheduler, a lazy ``"module:Class"`` reference
    torch_scheduler: ClassVar[str] = ""
    #: config keys whose values this Flax port does not implement, mapped to the only value it takes
    unsupported: ClassVar[Mapping[str, Any]] = {}
    _compatibles: ClassVar[tuple[str, ...]] = ()
    order: ClassVar[int] = 1
    config_name: ClassVar[str] = "scheduler_config.json"
    dtype: Any = jnp.float32
    #: ``prev_sample`` takes ``model_output``'s dtype instead of ``sample``'s (as the PyTorch twin does)
    _model_output_dtype: ClassVar[bool] = False

    def __init__(self, **config: Any) -> None:
        cls = import_ref(self.torch_scheduler)
        self._host = cls(**config)
        self._check_supported()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, /, **overrides: Any) -> Self:
        """Build from a scheduler config (also another scheduler's: the PyTorch rules of a swap apply)."""
        host = import_ref(cls.torch_scheduler).from_config(dict(config or {}), **overrides)
        self = cls.__new__(cls)
        self._host = host
        self._check_supported()
        return self

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike[str], subfolder: str | None = None, **overrides: Any
    ) -> tuple[Self, FlaxSchedulerState]:
        """Load ``scheduler_config.json`` from ``folder`` (``/subfolder``); returns ``(scheduler, state)``.

        :raises OSError: when the file is missing.
        """
        path = Path(folder) / (subfolder or "") / cls.config_name
        if not path.is_file():
            raise OSError(f"{cls.__name__}.from_pretrained: no {cls.config_name} in {path.parent}")
        self = cls.from_config(json.loads(path.read_text()), **overrides)
        return self, self.create_state()

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write ``scheduler_config.json`` (PyTorch class name: the Diffusers layout) into ``save_directory``."""
        return Path(self._host.save_pretrained(save_directory))

    @property
    def config(self) -> Any:
        """The validated config (the PyTorch scheduler's ``FrozenDict``-like config)."""
        return self._host.config

    def _check_supported(self) -> None:
        for key, only in self.unsupported.items():
            value = self.config.get(key, only)
            if value != only and not (value is None and only is False):
                raise ValueError(
                    f"{type(self).__name__}: {key}={value!r} is not supported by the Flax port (only {only!r}); "
                    f"use the PyTorch {self.torch_scheduler.rpartition(':')[2]} for it"
                )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.config)})"

    # -- state ------------------------------------------------------------------------------

    def create_state(self) -> FlaxSchedulerState:
        """The state before ``set_timesteps``: the training schedule, no inference steps."""
        ac = np.asarray(self._host.alphas_cumprod, dtype=np.float32)
        return FlaxSchedulerState(
            timesteps=jnp.asarray(np.arange(len(ac))[::-1].astype(np.int32)),
            tables={},
            buffers={},
            step_index=jnp.asarray(0, jnp.int32),
            init_noise_sigma=jnp.asarray(1.0, jnp.float32),
            alphas_cumprod=_f32(ac),
            num_inference_steps=None,
        )

    def set_timesteps(
        self, state: FlaxSchedulerState, num_inference_steps: int, shape: tuple[int, ...] = ()
    ) -> FlaxSchedulerState:
        """A state for ``num_inference_steps`` steps on samples of ``shape`` (host-side: not inside ``jit``).

        :raises ValueError: on a bad step count (the PyTorch scheduler's error).
        """
        if not isinstance(state, FlaxSchedulerState):
            raise TypeError(f"{type(self).__name__}.set_timesteps: state must be a FlaxSchedulerState, got {state!r}")
        self._host.set_timesteps(num_inference_steps)
        timesteps, tables, init_sigma = self._tables(num_inference_steps)
        return dataclasses.replace(
            state,
            timesteps=jnp.asarray(timesteps),
            tables={k: _f32(v) for k, v in tables.items()},
            buffers={k: jnp.zeros(v, jnp.float32) for k, v in self._buffers(tuple(shape)).items()},
            step_index=jnp.asarray(0, jnp.int32),
            init_noise_sigma=jnp.asarray(init_sigma, jnp.float32),
            num_inference_steps=int(num_inference_steps),
        )

    def set_begin_index(self, state: FlaxSchedulerState, begin_index: int | jax.Array) -> FlaxSchedulerState:
        """Start stepping at ``state.timesteps[begin_index]`` (image-to-image starts part-way)."""
        return dataclasses.replace(state, step_index=jnp.asarray(begin_index, jnp.int32))

    @abc.abstractmethod
    def _tables(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
        """``(timesteps, named per-step tables, initial noise sigma)`` for ``n`` inference steps."""

    def _buffers(self, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {}

    # -- protocol -----------------------------------------------------------------------------

    def scale_model_input(
        self, state: FlaxSchedulerState, sample: jax.Array, timestep: jax.Array | int | None = None
    ) -> jax.Array:
        """The model input at the current step (unchanged for the VP samplers)."""
        return sample

    def add_noise(
        self, state: FlaxSchedulerState, original_samples: jax.Array, noise: jax.Array, timesteps: jax.Array
    ) -> jax.Array:
        """Forward diffusion q(x_t | x_0) at integer training ``timesteps`` (one per sample; DDPM eq. 4)."""
        a = _per_sample(state.alphas_cumprod[jnp.asarray(timesteps).astype(jnp.int32).reshape(-1)], original_samples)
        return jnp.sqrt(a) * original_samples + jnp.sqrt(1 - a) * noise

    def step(
        self,
        state: FlaxSchedulerState,
        model_output: jax.Array,
        timestep: jax.Array | int,
        sample: jax.Array,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
    ) -> FlaxSchedulerOutput:
        """One step from the current schedule position; ``key`` or ``noise`` for the stochastic samplers.

        ``timestep`` is accepted for the Diffusers signature; the position is ``state.step_index``. The
        update itself is the sampler's ``_update`` (its docstring names the algorithm).

        :param model_output: the model's prediction for ``sample``, same shape.
        :param sample: x at the current step, ``(batch, ...)`` float.
        :param key: a ``jax.random`` key for the stochastic samplers (DDPM), or ``noise``: the draw itself,
            ``sample``'s shape.
        :returns: ``prev_sample`` (``sample``'s shape; ``sample``'s dtype, ``model_output``'s for the samplers
            whose PyTorch twin returns that) and the state one position further, with the updated buffers.
        :raises ValueError: a stochastic step with neither ``key`` nor ``noise``; an unknown ``prediction_type``.
        """
        prev, buffers = self._update(state, model_output, sample, functools.partial(self._noise, key, noise, sample))
        return self._done(state, prev, model_output if self._model_output_dtype else sample, **buffers)

    @abc.abstractmethod
    def _update(self, state: FlaxSchedulerState, model_output: jax.Array, sample: jax.Array, draw: _Draw) -> _Update:
        """``(prev_sample, buffers to replace)`` for one step at ``state.step_index`` (traced: pure JAX).

        ``draw()`` gives the step's noise (``sample``'s shape and dtype) to the stochastic samplers.
        """

    def _done(
        self, state: FlaxSchedulerState, prev: jax.Array, like: jax.Array, **buffers: jax.Array
    ) -> FlaxSchedulerOutput:
        new = dataclasses.replace(state, step_index=state.step_index + 1, buffers={**state.buffers, **buffers})
        return FlaxSchedulerOutput(prev_sample=prev.astype(like.dtype), state=new)

    def _noise(self, key: jax.Array | None, noise: jax.Array | None, like: jax.Array) -> jax.Array:
        if noise is not None:
            return noise.astype(like.dtype)
        if key is None:
            raise ValueError(f"{type(self).__name__}.step is stochastic here: pass key= (a jax.random key) or noise=")
        return jax.random.normal(key, like.shape, like.dtype)

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)


def _x0_eps(
    model_output: jax.Array, sample: jax.Array, sqrt_a: jax.Array, sqrt_1ma: jax.Array, prediction_type: str
) -> tuple[jax.Array, jax.Array]:
    """Clean sample and noise from a VP model output (DDPM eq. 15; v-prediction: Salimans & Ho 2022)."""
    if prediction_type == "epsilon":
        return (sample - sqrt_1ma * model_output) / sqrt_a, model_output
    if prediction_type == "sample":
        return model_output, (sample - sqrt_a * model_output) / sqrt_1ma
    if prediction_type == "v_prediction":
        return sqrt_a * sample - sqrt_1ma * model_output, sqrt_a * model_output + sqrt_1ma * sample
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose 'epsilon', 'sample' or 'v_prediction'")


def _threshold(x0: jax.Array, ratio: float, max_value: float) -> jax.Array:
    """Dynamic thresholding per sample (Imagen, sec. 2.3)."""
    flat = x0.reshape(x0.shape[0], -1).astype(jnp.float32)
    s = jnp.clip(jnp.quantile(jnp.abs(flat), ratio, axis=1), 1, max_value)[:, None]
    return (jnp.clip(flat, -s, s) / s).reshape(x0.shape).astype(x0.dtype)


def _clip_or_threshold(x0: jax.Array, cfg: Any) -> jax.Array:
    if cfg.get("thresholding", False):
        return _threshold(x0, cfg.get("dynamic_thresholding_ratio", 0.995), cfg.get("sample_max_value", 1.0))
    if cfg.get("clip_sample", False):
        r = cfg.get("clip_sample_range", 1.0)
        return jnp.clip(x0, -r, r)
    return x0


def _alpha(host: Any, t: int) -> float:
    return float(host.alphas_cumprod[t]) if t >= 0 else float(host.final_alpha_cumprod)


def _roots_table(host: Any, ts: list[int]) -> dict[str, np.ndarray]:
    """``a``, ``sqrt(a)``, ``sqrt(1 - a)`` at each ``t`` (float32, computed as the PyTorch scheduler does)."""
    roots = [host._roots(t) for t in ts]
    return {
        "a": np.array([float(r[0]) for r in roots], np.float32),
        "sqrt_a": np.array([float(r[1]) for r in roots], np.float32),
        "sqrt_1ma": np.array([float(r[2]) for r in roots], np.float32),
    }


class FlaxDDIMScheduler(FlaxScheduler):
    """DDIM (Song et al. 2021, eq. 12); ``eta`` > 0 adds noise from ``key`` / ``noise``."""

    torch_scheduler = "difflux_schedulers.ddim:DDIMScheduler"

    def _tables(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
        host = self._host
        ts = [int(t) for t in host.timesteps.tolist()]
        stride = host.config.num_train_timesteps // n
        now = _roots_table(host, ts)
        prev = _roots_table(host, [t - stride for t in ts])
        tables = {**now, **{f"prev_{k}": v for k, v in prev.items()}}
        return np.asarray(ts, np.int32), tables, 1.0

    def step(
        self,
        state: FlaxSchedulerState,
        model_output: jax.Array,
        timestep: jax.Array | int,
        sample: jax.Array,
        key: jax.Array | None = None,
        noise: jax.Array | None = None,
        eta: float = 0.0,
    ) -> FlaxSchedulerOutput:
        """One DDIM step from ``timestep`` to ``timestep - T // n`` (eq. 12; eq. 16 for ``eta``).

        ``eta`` > 0 adds noise, drawn with ``key`` or taken from ``noise``; the rest as :meth:`FlaxScheduler.step`.
        """
        draw = functools.partial(self._noise, key, noise, sample)
        return self._done(state, self._update(state, model_output, sample, draw, eta)[0], sample)

    def _update(
        self, state: FlaxSchedulerState, model_output: jax.Array, sample: jax.Array, draw: _Draw, eta: float = 0.0
    ) -> _Update:
        """DDIM, eq. 12 (eq. 16 for ``eta``)."""
        cfg = self.config
        sqrt_a, sqrt_1ma = _at(state, "sqrt_a", sample), _at(state, "sqrt_1ma", sample)
        x0, eps = _x0_eps(model_output, sample, sqrt_a, sqrt_1ma, cfg.prediction_type)
        x0 = _clip_or_threshold(x0, cfg)
        if eta == 0:
            return _at(state, "prev_sqrt_a", sample) * x0 + _at(state, "prev_sqrt_1ma", sample) * eps, {}
        a, a_prev = _at(state, "a", sample), _at(state, "prev_a", sample)
        std = eta * jnp.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        prev = jnp.sqrt(a_prev) * x0 + jnp.sqrt(1 - a_prev - std**2) * eps
        return prev + std * draw(), {}


class FlaxDDPMScheduler(FlaxScheduler):
    """Ancestral DDPM sampling (Ho et al. 2020, eq. 7 posterior), ``fixed_small`` / ``fixed_large`` variances."""

    torch_scheduler = "difflux_schedulers.ddpm:DDPMScheduler"

    def _check_supported(self) -> None:
        kind = self.config.variance_type
        if kind not in ("fixed_small", "fixed_small_log", "fixed_large"):
            raise ValueError(
                f"FlaxDDPMScheduler: variance_type={kind!r} is not supported by the Flax port; use 'fixed_small', "
                "'fixed_small_log' or 'fixed_large', or the PyTorch DDPMScheduler"
            )

    def _tables(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
        host = self._host
        pairs = host._step_pairs()
        cols: dict[str, list[float]] = {k: [] for k in ("x0_coeff", "sample_coeff", "std", "beta")}
        for t, prev_t in pairs:
            x0_c, s_c, beta, small, small_std = host._posterior_constants(t, prev_t)
            cols["x0_coeff"].append(float(x0_c))
            cols["sample_coeff"].append(float(s_c))
            kind = self.config.variance_type
            if kind == "fixed_small":
                std = float(small_std)
            elif kind == "fixed_small_log":
                std = float(np.float32(np.exp(0.5 * np.log(np.float32(small)))))
            else:
                std = float(np.float32(beta) ** np.float32(0.5))
            cols["std"].append(std if t > 0 else 0.0)
            cols["beta"].append(float(beta))
        ts = [t for t, _ in pairs]
        tables = {**_roots_table(host, ts), **{k: np.asarray(v, np.float32) for k, v in cols.items()}}
        return np.asarray(ts, np.int32), tables, 1.0

    def _update(self, state: FlaxSchedulerState, model_output: jax.Array, sample: jax.Array, draw: _Draw) -> _Update:
        """x_{t-1} = posterior mean + std * noise (no noise at t = 0); needs ``key`` or ``noise``."""
        cfg = self.config
        x0, _ = _x0_eps(
            model_output, sample, _at(state, "sqrt_a", sample), _at(state, "sqrt_1ma", sample), cfg.prediction_type
        )
        x0 = _clip_or_threshold(x0, cfg)
        prev = _at(state, "x0_coeff", sample) * x0 + _at(state, "sample_coeff", sample) * sample
        return prev + _at(state, "std", sample) * draw(), {}


def _adams_bashforth(ets: jax.Array, count: jax.Array) -> jax.Array:
    """Linear multistep combination (PNDM eq. 12) of the newest ``count`` (2-4) of ``ets`` (oldest first)."""
    e1, e2, e3, e4 = ets[3], ets[2], ets[1], ets[0]
    two = (3 * e1 - e2) / 2
    three = (23 * e1 - 16 * e2 + 5 * e3) / 12
    four = (55 * e1 - 59 * e2 + 37 * e3 - 9 * e4) * (1 / 24)
    return jnp.where(count <= 2, two, jnp.where(count == 3, three, four))


class FlaxPNDMScheduler(FlaxScheduler):
    """PLMS (PNDM with ``skip_prk_steps=True``, the Stable Diffusion setting; Liu et al. 2022, eq. 9 and 12)."""

    torch_scheduler = "difflux_schedulers.pndm:PNDMScheduler"
    unsupported: ClassVar[Mapping[str, Any]] = {"skip_prk_steps": True}

    def _tables(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
        host = self._host
        ts = [int(t) for t in host.timesteps.tolist()]
        stride = host.config.num_train_timesteps // n
        # the second call of the PLMS warm-up redoes the first step (from t + stride down to t)
        pairs = [(t + stride, t) if i == 1 else (t, t - stride) for i, t in enumerate(ts)]
        cols: dict[str, list[float]] = {"sample_coeff": [], "alpha_gap": [], "denom": []}
        for t, prev_t in pairs:
            c = host._transfer_constants(t, prev_t)
            for name, value in zip(cols, c, strict=True):
                cols[name].append(float(value))
        roots = _roots_table(host, [t for t, _ in pairs])
        return np.asarray(ts, np.int32), {**roots, **{k: np.asarray(v, np.float32) for k, v in cols.items()}}, 1.0

    def _buffers(self, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {"ets": (4, *shape), "cur_sample": shape}

    def _update(self, state: FlaxSchedulerState, model_output: jax.Array, sample: jax.Array, draw: _Draw) -> _Update:
        """One PLMS step (deterministic); the first two calls are the Heun-like warm-up."""
        cfg = self.config
        i = state.step_index
        if cfg.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"PNDM supports prediction_type 'epsilon' or 'v_prediction', not {cfg.prediction_type!r}")
        ets = state.buffers["ets"].astype(sample.dtype)
        ets = jnp.where(i == 1, ets, _push(ets, model_output))  # the warm-up's second call keeps the history
        count = jnp.where(i == 1, 1, jnp.minimum(i + jnp.where(i == 0, 1, 0), 4))
        out = jnp.where(
            i == 0, model_output, jnp.where(i == 1, (model_output + ets[3]) / 2, _adams_bashforth(ets, count))
        )
        cur = state.buffers["cur_sample"].astype(sample.dtype)
        x = jnp.where(i == 1, cur, sample)
        eps = out
        if cfg.prediction_type == "v_prediction":  # the combined output, converted at the step's start
            eps = _x0_eps(out, x, _at(state, "sqrt_a", x), _at(state, "sqrt_1ma", x), "v_prediction")[1]
        coeff, gap, denom = (_at(state, k, sample) for k in ("sample_coeff", "alpha_gap", "denom"))
        return coeff * x - (gap * eps) / denom, {"ets": ets, "cur_sample": jnp.where(i == 0, sample, cur)}


class _SigmaScheduler(FlaxScheduler):
    """Samplers in sigma = sqrt((1 - a) / a): model input scaled by 1 / sqrt(sigma^2 + 1)."""

    def _sigma_tables(self) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
        host = self._host
        sigmas = np.asarray(host.sigmas, np.float32)
        return np.asarray(host.timesteps, np.float32), {"sigma": sigmas}, float(host.init_noise_sigma)

    def scale_model_input(
        self, state: FlaxSchedulerState, sample: jax.Array, timestep: jax.Array | int | None = None
    ) -> jax.Array:
        """Divide by sqrt(sigma^2 + 1) (Karras et al. 2022, c_in)."""
        sigma = _at(state, "sigma", sample)
        return sample / jnp.sqrt(sigma**2 + 1)

    def add_noise(
        self, state: FlaxSchedulerState, original_samples: jax.Array, noise: jax.Array, timesteps: jax.Array
    ) -> jax.Array:
        """x = x_0 + sigma eps at the schedule position of each of ``timesteps`` (values of ``state.timesteps``)."""
        t = jnp.asarray(timesteps, jnp.float32).reshape(-1)
        index = jnp.argmin(jnp.abs(state.timesteps[None, :] - t[:, None]), axis=1)
        return original_samples + noise * _per_sample(state.tables["sigma"][index], original_samples)

    def _denoised(self, model_output: jax.Array, sample: jax.Array, sigma: jax.Array) -> jax.Array:
        kind = self.config.prediction_type
        if kind == "epsilon":
            return sample - sigma * model_output
        if kind in ("sample", "original_sample"):
            return model_output
        if kind == "v_prediction":
            return model_output * (-sigma / jnp.sqrt(sigma**2 + 1)) + sample / (sigma**2 + 1)
        raise ValueError(f"unknown prediction_type {kind!r}; choose 'epsilon', 'sample' or 'v_prediction'")


class FlaxEulerDiscreteScheduler(_SigmaScheduler):
    """Euler steps of the probability-flow ODE (Karras et al. 2022, Algorithm 2 with no churn)."""

    torch_scheduler = "difflux_schedulers.euler:EulerDiscreteScheduler"
    unsupported: ClassVar[Mapping[str, Any]] = {"timestep_type": "discrete"}
    _model_output_dtype: ClassVar[bool] = True

    def _tables(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
        ts, tables, init = self._sigma_tables()
        s = tables["sigma"]
        tables["dt"] = np.concatenate([s[1:] - s[:-1], [0.0]]).astype(np.float32)
        return ts, tables, init

    def _update(self, state: FlaxSchedulerState, model_output: jax.Array, sample: jax.Array, draw: _Draw) -> _Update:
        """x_next = x + (x - denoised) / sigma * (sigma_next - sigma); deterministic."""
        x = sample.astype(jnp.float32)
        sigma = _at(state, "sigma", x)
        denoised = self._denoised(model_output.astype(jnp.float32), x, sigma)
        return (x - denoised) / sigma * _at(state, "dt", x) + x, {}


class FlaxLMSDiscreteScheduler(_SigmaScheduler):
    """Linear multistep in sigma over the last ``order`` (4) derivatives (k-diffusion ``sample_lms``)."""

    torch_scheduler = "difflux_schedulers.lms:LMSDiscreteScheduler"
    max_order: ClassVar[int] = 4

    def _tables(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
        ts, tables, init = self._sigma_tables()
        coeffs = np.zeros((n + 1, self.max_order), np.float32)
        for i in range(n):
            order = min(i + 1, self.max_order)
            for k in range(order):
                coeffs[i, k] = self._host.get_lms_coefficient(order, i, k)
        tables["coeffs"] = coeffs
        return ts, tables, init

    def _buffers(self, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {"derivatives": (self.max_order, *shape)}

    def _update(self, state: FlaxSchedulerState, model_output: jax.Array, sample: jax.Array, draw: _Draw) -> _Update:
        """x_next = x + sum_k c_k d_{i-k}, with the Lagrange-integral weights of the schedule; deterministic."""
        sigma = _at(state, "sigma", sample)
        denoised = self._denoised(model_output, sample, sigma)
        d = (sample - denoised) / sigma
        history = _push(state.buffers["derivatives"].astype(sample.dtype), d)
        c = state.tables["coeffs"][state.step_index].astype(sample.dtype)  # newest first
        return sample + jnp.tensordot(c, history[::-1], axes=1), {"derivatives": history}


class FlaxDPMSolverMultistepScheduler(FlaxScheduler):
    """DPM-Solver++ multistep (Lu et al. 2022, Algorithm 2; orders 1-3, ``midpoint`` or ``heun``)."""

    torch_scheduler = "difflux_schedulers.dpm_solver:DPMSolverMultistepScheduler"
    unsupported: ClassVar[Mapping[str, Any]] = {
        "algorithm_type": "dpmsolver++",
        "use_flow_sigmas": False,
        "thresholding": False,
        "variance_type": None,
    }
    _model_output_dtype: ClassVar[bool] = True

    def _check_supported(self) -> None:
        if self.config.get("variance_type") is not None:
            raise ValueError(
                "FlaxDPMSolverMultistepScheduler: variance_type (a learned variance) is not supported by the Flax "
                "port; use the PyTorch DPMSolverMultistepScheduler"
            )
        super()._check_supported()

    def _tables(self, n: int) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
        host, cfg = self._host, self.config
        levels = host._levels
        few = cfg.lower_order_final and n < 15
        orders = []
        for i in range(n):
            lower = min(i, cfg.solver_order)
            first = i == n - 1 and (cfg.euler_at_final or few or cfg.final_sigmas_type == "zero")
            second = i == n - 2 and few
            if cfg.solver_order == 1 or lower < 1 or first:
                orders.append(1)
            elif cfg.solver_order == 2 or lower < 2 or second:
                orders.append(2)
            else:
                orders.append(3)
        tables = {
            "alpha": np.array([float(lv.alpha) for lv in levels], np.float32),
            "sigma": np.array([float(lv.sigma) for lv in levels], np.float32),
            "lam": np.array([float(lv.lam) for lv in levels], np.float32),
            "order": np.array([*orders, 1], np.float32),
        }
        return np.asarray(host.timesteps, np.int32), tables, 1.0

    def _buffers(self, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {"model_outputs": (3, *shape)}

    def add_noise(
        self, state: FlaxSchedulerState, original_samples: jax.Array, noise: jax.Array, timesteps: jax.Array
    ) -> jax.Array:
        """alpha x0 + sigma eps at the schedule level of each of ``timesteps`` (values of ``state.timesteps``)."""
        t = jnp.asarray(timesteps).reshape(-1)
        index = jnp.argmax(state.timesteps[None, :] == t[:, None], axis=1)
        alpha = _per_sample(state.tables["alpha"][index], original_samples)
        sigma = _per_sample(state.tables["sigma"][index], original_samples)
        return alpha * original_samples + sigma * noise

    def _update(self, state: FlaxSchedulerState, model_output: jax.Array, sample: jax.Array, draw: _Draw) -> _Update:
        """One multistep update; the order per step follows the PyTorch scheduler (warm-up, lower-order final)."""
        cfg = self.config
        x = sample.astype(jnp.float32)
        a0, s0 = _at(state, "alpha", x), _at(state, "sigma", x)
        x0 = _x0_eps(model_output.astype(jnp.float32), x, a0, s0, str(cfg.prediction_type))[0]
        history = _push(state.buffers["model_outputs"], x0)
        lam = [_at(state, "lam", x, -k) for k in (2, 1, 0)]  # oldest first: i-2, i-1, i
        lam_t, a_t, s_t = _at(state, "lam", x, 1), _at(state, "alpha", x, 1), _at(state, "sigma", x, 1)
        h = lam_t - lam[2]
        phi = jnp.exp(-h) - 1.0
        m0, m1, m2 = history[2], history[1], history[0]
        base = (s_t / s0) * x - (a_t * phi) * m0

        def first(_: None) -> jax.Array:
            return base

        def second(_: None) -> jax.Array:
            d1 = (1.0 / ((lam[2] - lam[1]) / h)) * (m0 - m1)
            if cfg.solver_type == "midpoint":
                return base - 0.5 * (a_t * phi) * d1
            return base + (a_t * (phi / h + 1.0)) * d1

        def third(_: None) -> jax.Array:
            r0, r1 = (lam[2] - lam[1]) / h, (lam[1] - lam[0]) / h
            d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
            return base + (a_t * (phi / h + 1.0)) * d1 - (a_t * ((phi + h) / h**2 - 0.5)) * d2

        order = state.tables["order"][state.step_index].astype(jnp.int32)
        branches: list[Callable[[None], jax.Array]] = [first, second, third]
        return jax.lax.switch(order - 1, branches, None), {"model_outputs": history}


#: Flax scheduler class name -> lazy reference (the plugin registers these)
FLAX_SCHEDULERS: dict[str, str] = {
    cls.__name__: f"{__name__}:{cls.__name__}"
    for cls in (
        FlaxDDIMScheduler,
        FlaxDDPMScheduler,
        FlaxPNDMScheduler,
        FlaxLMSDiscreteScheduler,
        FlaxEulerDiscreteScheduler,
        FlaxDPMSolverMultistepScheduler,
    )
}
