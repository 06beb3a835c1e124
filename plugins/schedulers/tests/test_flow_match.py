"""FlowMatchEulerDiscreteScheduler: conformance kit, parity with Diffusers, errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.flow_match import FlowMatchEulerDiscreteScheduler, calculate_shift
from scheduler_parity import PARITY_ATOL, PARITY_RTOL, SHAPE, assert_config_interop, diffusers_class, stand_in_model


class TestFlowMatchConformance(SchedulerConformance):
    scheduler_class = FlowMatchEulerDiscreteScheduler
    configs = [{}, {"shift": 3.0, "stochastic_sampling": True}, {"invert_sigmas": True}]


def _loop(
    scheduler: Any, n: int | None, set_kwargs: dict[str, Any], seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A flow-matching pipeline loop (Diffusers' flow scheduler has no scale_model_input / init_noise_sigma)."""
    scheduler.set_timesteps(n, **set_kwargs)
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed + 1)
    for t in scheduler.timesteps:
        sample = scheduler.step(stand_in_model(sample, t), t, sample, generator=gen).prev_sample
    return scheduler.timesteps, sample


def _parity(config: dict[str, Any], n: int | None = 10, **set_kwargs: Any) -> None:
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    t_ours, x_ours = _loop(FlowMatchEulerDiscreteScheduler(**config), n, set_kwargs)
    t_ref, x_ref = _loop(diffusers_class("FlowMatchEulerDiscreteScheduler")(**config), n, set_kwargs)
    assert t_ours.dtype == t_ref.dtype and torch.equal(t_ours, t_ref), (t_ours.tolist(), t_ref.tolist())
    torch.testing.assert_close(x_ours, x_ref, atol=PARITY_ATOL, rtol=PARITY_RTOL)


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"shift": 3.0},
        {"shift": 3.0, "shift_terminal": 0.1},
        {"use_karras_sigmas": True, "shift": 2.0},
        {"use_exponential_sigmas": True},
        {"use_beta_sigmas": True},
        {"invert_sigmas": True},
        {"stochastic_sampling": True, "shift": 2.0},
        {"num_train_timesteps": 500, "shift": 1.5},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default",
)
def test_parity(config: dict[str, Any]) -> None:
    _parity(config)


@pytest.mark.parametrize("kind", ["exponential", "linear"])
def test_parity_dynamic_shifting(kind: str) -> None:
    mu = calculate_shift(1024)
    _parity({"use_dynamic_shifting": True, "time_shift_type": kind}, mu=mu if kind == "exponential" else mu + 1.0)


def test_parity_custom_sigmas_and_timesteps() -> None:
    _parity({"shift": 3.0}, None, sigmas=[1.0, 0.8, 0.55, 0.3, 0.1])
    _parity({"shift": 3.0}, None, timesteps=[1000.0, 750.0, 400.0, 120.0])
    _parity({"shift": 3.0}, 4, sigmas=[1.0, 0.7, 0.4, 0.1], timesteps=[1000.0, 700.0, 400.0, 100.0])


def test_calculate_shift_matches_flux_formula() -> None:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift as reference

    for seq_len in (256, 1024, 4096, 7000):
        assert calculate_shift(seq_len) == pytest.approx(reference(seq_len), rel=1e-12)


def test_per_token_timesteps_match_diffusers() -> None:
    ours = FlowMatchEulerDiscreteScheduler(shift=2.0)
    ref = diffusers_class("FlowMatchEulerDiscreteScheduler")(shift=2.0)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 6, 4, generator=gen)
    velocity = torch.randn(2, 6, 4, generator=gen)
    for s in (ours, ref):
        s.set_timesteps(8)
    per_token = ours.timesteps[2] * torch.linspace(0.5, 1.0, 6).repeat(2, 1)
    t = ours.timesteps[2]
    a = ours.step(velocity, t, sample, per_token_timesteps=per_token).prev_sample
    b = ref.step(velocity, t, sample, per_token_timesteps=per_token).prev_sample
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_scale_noise_and_add_noise_match_diffusers() -> None:
    ours = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref = diffusers_class("FlowMatchEulerDiscreteScheduler")(shift=3.0)
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    t = ours.timesteps[[3, 7]]
    expected = ref.scale_noise(x0, t, noise)
    torch.testing.assert_close(ours.scale_noise(x0, t, noise), expected)
    torch.testing.assert_close(ours.add_noise(x0, noise, t), expected)


def test_config_interop(tmp_path: Path) -> None:
    assert_config_interop(FlowMatchEulerDiscreteScheduler, {"shift": 3.0, "use_dynamic_shifting": True}, tmp_path)


def test_dynamic_shifting_needs_mu() -> None:
    s = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    with pytest.raises(ValueError, match="mu="):
        s.set_timesteps(10)


def test_integer_timestep_is_rejected() -> None:
    s = FlowMatchEulerDiscreteScheduler()
    s.set_timesteps(4)
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="integer timestep"):
        s.step(x, 0, x)


def test_only_one_sigma_spacing() -> None:
    with pytest.raises(ValueError, match="at most one"):
        FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True, use_beta_sigmas=True)


def test_set_shift_changes_the_schedule() -> None:
    s = FlowMatchEulerDiscreteScheduler()
    s.set_timesteps(5)
    plain = s.sigmas.clone()
    s.set_shift(3.0)
    s.set_timesteps(5)
    assert s.shift == 3.0 and (s.sigmas[1:-1] > plain[1:-1]).all()
