"""Issue 10, item 1: every scheduler x every timestep spacing x every sigma option x 1/2/3/10/1000 steps.

Each configuration either gives a finite schedule that agrees with itself (timesteps and sigmas
of one length, noise levels not increasing; Diffusers' schedule where Diffusers' is finite) and a
sampling loop that runs to the end with a finite sample, or is refused with a clear ``ValueError``
/ ``ConfigError`` before any step. Schedulers are built once per configuration and shared by the
step counts (``set_timesteps`` resets them), so the sweep stays within a few seconds.
"""

from __future__ import annotations

import functools
import itertools
import warnings
from typing import Any

import difflux_schedulers as S
import numpy as np
import pytest
import torch
from difflux.errors import ConfigError
from scheduler_parity import diffusers_class

STEPS = (1, 2, 3, 10, 1000)
LOOP_STEPS = (1, 2, 3, 10)
#: the sigma options of the issue, as config overrides (each applies where the class has the keys)
SIGMA_OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
    "shift": {"shift": 3.0},
    "flow_shift": {"use_flow_sigmas": True, "flow_shift": 3.0},
    "shift_terminal": {"shift_terminal": 0.1},
    "flow_shift_terminal": {"use_flow_sigmas": True, "shift_terminal": 0.1},
    "dynamic_shift": {"use_dynamic_shifting": True},
    "flow_dynamic_shift": {"use_flow_sigmas": True, "use_dynamic_shifting": True},
}
#: the alternative training schedule where Karras / exponential / beta timesteps repeat (the public report)
BETA_SCHEDULES = (None, "squaredcos_cap_v2")
#: the schedulers of the common protocol (``for t in timesteps: step(...)``)
CLASSES = [
    "CMStochasticIterativeScheduler",
    "DDIMInverseScheduler",
    "DDIMScheduler",
    "DDPMScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "EDMEulerScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KarrasVeScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "PNDMScheduler",
    "ScoreSdeVeScheduler",
    "UniPCMultistepScheduler",
]


def _grid() -> list[tuple[str, str | None, str, str | None]]:
    out = []
    for name in CLASSES:
        params = getattr(S, name).init_parameter_names()
        spacings: list[str | None] = ["linspace", "leading", "trailing"] if "timestep_spacing" in params else [None]
        betas = BETA_SCHEDULES if "beta_schedule" in params else (None,)
        for spacing, option, beta in itertools.product(spacings, SIGMA_OPTIONS, betas):
            if set(SIGMA_OPTIONS[option]) <= params:
                out.append((name, spacing, option, beta))
    return out


GRID = _grid()


def _config(spacing: str | None, option: str, beta: str | None) -> dict[str, Any]:
    config = dict(SIGMA_OPTIONS[option])
    if spacing is not None:
        config["timestep_spacing"] = spacing
    if beta is not None:
        config["beta_schedule"] = beta
    return config


def _set_kwargs(option: str) -> dict[str, Any]:
    return {"mu": 0.8} if "dynamic" in option else {}


@functools.cache
def _ours(name: str, spacing: str | None, option: str, beta: str | None) -> Any:
    """One difflux scheduler per configuration (or the construction error)."""
    try:
        return getattr(S, name)(**_config(spacing, option, beta))
    except (ValueError, ConfigError) as exc:
        return exc


@functools.cache
def _reference(name: str, spacing: str | None, option: str, beta: str | None, steps: int) -> Any:
    """Diffusers' ``(timesteps, sigmas)`` for a configuration, or ``None`` where it fails or is not finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ref = diffusers_class(name)(**_config(spacing, option, beta))
            ref.set_timesteps(steps, **_set_kwargs(option))
        except Exception:
            return None
    ts = torch.as_tensor(ref.timesteps).double()
    sig = getattr(ref, "sigmas", None)
    sig = None if sig is None else torch.as_tensor(sig).double()
    if not torch.isfinite(ts).all() or (sig is not None and not torch.isfinite(sig).all()):
        return None
    return ts, sig


#: Diffusers builds its whole 1000-step schedule in these classes' ``__init__`` (about a second per
#: configuration): the grid compares them in test_multistep_k.py's parity tests instead
_SLOW_REFERENCE = ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler")


#: Diffusers sets these sigmas in a separate call (``set_sigmas``) or keeps none
_NOT_COMPARABLE_SIGMAS = ("ScoreSdeVeScheduler", "KarrasVeScheduler")


def _compared(name: str, steps: int) -> bool:
    """Whether the grid compares this case with Diffusers (1000-step and slow-to-build references are not)."""
    return steps in LOOP_STEPS and name not in _SLOW_REFERENCE


def _model(sample: torch.Tensor, t: Any) -> torch.Tensor:
    return 0.1 * sample + 0.05 * torch.cos(3 * sample)


def _check_schedule(scheduler: Any, name: str, steps: int) -> None:
    ts = torch.as_tensor(scheduler.timesteps).double()
    assert ts.ndim == 1 and len(ts) >= steps, f"{name}: {len(ts)} timesteps for {steps} steps"
    assert torch.isfinite(ts).all(), f"{name}: timesteps not finite: {ts.tolist()[:8]}"
    sig = getattr(scheduler, "sigmas", None)
    if sig is None or name in ("ScoreSdeVeScheduler", "KarrasVeScheduler"):
        return
    sig = torch.as_tensor(sig).double()
    assert torch.isfinite(sig).all(), f"{name}: sigmas not finite: {sig.tolist()[:8]}"
    if scheduler.num_inference_steps is None:
        return
    # a noise level for every timestep (and the final one)
    assert len(sig) >= len(ts), f"{name}: {len(sig)} sigmas for {len(ts)} timesteps"
    if not scheduler.config.get("invert_sigmas", False):
        assert bool((sig[1:] <= sig[:-1] * (1 + 1e-6) + 1e-6).all()), f"{name}: sigmas increase: {sig.tolist()}"


@pytest.mark.parametrize(("name", "spacing", "option", "beta"), GRID, ids=["-".join(map(str, g)) for g in GRID])
def test_every_configuration_gives_a_valid_schedule_or_a_clear_error(
    name: str, spacing: str | None, option: str, beta: str | None
) -> None:
    scheduler = _ours(name, spacing, option, beta)
    if isinstance(scheduler, Exception):  # refused at construction: the message names the option
        assert any(k in str(scheduler) for k in (*SIGMA_OPTIONS[option], "timestep_spacing")), scheduler
        return
    for steps in STEPS:
        try:
            scheduler.set_timesteps(steps, **_set_kwargs(option))
        except ValueError as exc:
            assert str(exc) and ("steps" in str(exc) or "num_inference_steps" in str(exc)), exc
            continue
        _check_schedule(scheduler, name, steps)
        ref = _reference(name, spacing, option, beta, steps) if _compared(name, steps) else None
        if ref is not None:
            ts = torch.as_tensor(scheduler.timesteps).double()
            assert ts.shape == ref[0].shape, f"{name} {steps}: {ts.tolist()[:6]} vs Diffusers {ref[0].tolist()[:6]}"
            torch.testing.assert_close(ts, ref[0], rtol=1e-6, atol=1e-4)
            if ref[1] is not None and name not in _NOT_COMPARABLE_SIGMAS:
                torch.testing.assert_close(torch.as_tensor(scheduler.sigmas).double(), ref[1], rtol=1e-5, atol=1e-6)
        if steps not in LOOP_STEPS:
            continue
        sample = torch.linspace(-1, 1, 8).reshape(1, 2, 2, 2) * float(scheduler.init_noise_sigma)
        generator = torch.Generator().manual_seed(0)
        for k, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(sample, t)
            sample = scheduler.step(_model(model_in, t), t, sample, generator=generator).prev_sample
            assert scheduler.step_index == k + 1, f"{name} {steps}: step index {scheduler.step_index} at {k}"
        assert torch.isfinite(sample).all(), f"{name} {steps} steps: the sample is not finite"


# KarrasVe has no plain loop; the score-SDE predictor needs a score model to stay finite over 1000 steps
@pytest.mark.parametrize("name", [n for n in CLASSES if n not in ("KarrasVeScheduler", "ScoreSdeVeScheduler")])
def test_thousand_step_loop_runs_to_the_end_or_is_refused(name: str) -> None:
    scheduler = getattr(S, name)()
    n = min(1000, int(scheduler.config.get("num_train_timesteps", 1000)))
    n = min(n, int(scheduler.config.get("original_inference_steps", n)))  # LCM samples its distillation schedule
    try:
        scheduler.set_timesteps(n)
    except ValueError as exc:  # the solvers' 1000 spaced steps repeat a noise level (NaN in Diffusers)
        assert "fewer steps" in str(exc), exc
        scheduler.set_timesteps(n - 10)
    sample = torch.ones(1, 1, 1, 2) * float(scheduler.init_noise_sigma)
    for t in scheduler.timesteps:
        sample = scheduler.step(_model(scheduler.scale_model_input(sample, t), t), t, sample).prev_sample
    assert scheduler.step_index == len(scheduler.timesteps)
    assert torch.isfinite(sample).all()


CUSTOM_TIMESTEPS = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]
CUSTOM_SIGMAS = [14.6, 8.0, 4.0, 2.0, 1.0, 0.5, 0.1, 0.0]


def _custom_cases() -> list[tuple[str, str, str]]:
    cases = []
    for name in CLASSES:
        for kind, container in itertools.product(("timesteps", "sigmas"), ("list", "tensor", "array")):
            cases.append((name, kind, container))
    return cases


@pytest.mark.parametrize(("name", "kind", "container"), _custom_cases())
def test_custom_timesteps_and_sigmas_as_lists_tensors_arrays(name: str, kind: str, container: str) -> None:
    values: list[float] = list(CUSTOM_TIMESTEPS if kind == "timesteps" else CUSTOM_SIGMAS)
    if name in ("FlowMatchEulerDiscreteScheduler",):
        values = [v / 1000 for v in CUSTOM_TIMESTEPS] if kind == "sigmas" else [float(v) for v in CUSTOM_TIMESTEPS]
    if name in ("EDMEulerScheduler",) and kind == "sigmas":
        values = [i / 9 for i in range(10)]
    if name == "CMStochasticIterativeScheduler" and kind == "timesteps":
        values = [39, 30, 20, 10, 0]
    given: Any = {
        "list": values,
        "tensor": torch.tensor(values),
        "array": np.asarray(values),
    }[container]
    scheduler = getattr(S, name)()
    try:
        scheduler.set_timesteps(**{kind: given})
    except ValueError as exc:  # unsupported here: said at set_timesteps, naming the argument
        assert kind in str(exc) or "num_inference_steps" in str(exc), exc
        return
    reference = getattr(S, name)()
    reference.set_timesteps(**{kind: values})  # a list: the container must not matter
    torch.testing.assert_close(scheduler.timesteps, reference.timesteps)
    _check_schedule(scheduler, name, 1)
    sample = torch.linspace(-1, 1, 8).reshape(1, 2, 2, 2) * float(scheduler.init_noise_sigma)
    for t in scheduler.timesteps:
        sample = scheduler.step(_model(scheduler.scale_model_input(sample, t), t), t, sample).prev_sample
    assert torch.isfinite(sample).all()


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, float("nan")], "abc"], ids=["empty", "2-d", "nan", "text"])
@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "HeunDiscreteScheduler", "DDPMScheduler"])
def test_bad_custom_timesteps_are_a_clear_error(name: str, bad: Any) -> None:
    scheduler = getattr(S, name)()
    with pytest.raises(ValueError, match="timesteps"):
        scheduler.set_timesteps(timesteps=bad)
