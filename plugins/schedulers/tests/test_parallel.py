"""DDPMParallelScheduler, DDIMParallelScheduler: conformance; step, batch step and variance parity with Diffusers."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.parallel import DDIMParallelScheduler, DDPMParallelScheduler, ParallelScheduler
from scheduler_parity import PARITY_ATOL, PARITY_RTOL, assert_config_interop, assert_parity, diffusers_class

GRID: list[dict[str, Any]] = [
    {},
    {"timestep_spacing": "trailing", "beta_schedule": "scaled_linear", "clip_sample": False},
    {"prediction_type": "v_prediction", "clip_sample": False, "steps_offset": 1},
    {"prediction_type": "sample", "thresholding": True, "sample_max_value": 1.5},
]


class TestDDPMParallelConformance(SchedulerConformance):
    scheduler_class = DDPMParallelScheduler
    configs = [{}, {"variance_type": "fixed_large", "prediction_type": "v_prediction"}]


class TestDDIMParallelConformance(SchedulerConformance):
    scheduler_class = DDIMParallelScheduler
    configs = [{}, {"timestep_spacing": "trailing"}]


@pytest.mark.parametrize("cls", [DDPMParallelScheduler, DDIMParallelScheduler])
@pytest.mark.parametrize("config", GRID[:2])
def test_parallel_step_parity(cls: type, config: dict[str, Any]) -> None:
    assert_parity(cls, config, 10)


@pytest.mark.parametrize("cls", [DDPMParallelScheduler, DDIMParallelScheduler])
@pytest.mark.parametrize("config", GRID)
def test_batch_step_no_noise_and_variance_parity(cls: type, config: dict[str, Any]) -> None:
    """Every timestep of the schedule at once (the ParaDiGMS window), and each step's noise variance."""
    ours, theirs = cls(**config), diffusers_class(cls.__name__)(**config)
    for s in (ours, theirs):
        s.set_timesteps(8)
    g = torch.Generator().manual_seed(0)
    n = len(ours.timesteps)
    sample, output = torch.randn(n, 4, 6, 6, generator=g) * 2, torch.randn(n, 4, 6, 6, generator=g)
    a = ours.batch_step_no_noise(output, ours.timesteps, sample)
    b = theirs.batch_step_no_noise(output, theirs.timesteps, sample)
    torch.testing.assert_close(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    for t in ours.timesteps:
        torch.testing.assert_close(ours.step_variance(t), theirs._get_variance(t), atol=1e-9, rtol=1e-6)


def test_batch_step_equals_step_for_the_ode() -> None:
    """DDIM's batched step of one sample is its ordinary eta = 0 step."""
    s = DDIMParallelScheduler(clip_sample=False)
    s.set_timesteps(5)
    x, eps = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    t = s.timesteps[2]
    batched = s.batch_step_no_noise(eps, t.reshape(1), x)
    torch.testing.assert_close(batched, s.step(eps, t, x).prev_sample)


def test_parallel_protocol_and_bad_input() -> None:
    ddpm, ddim = DDPMParallelScheduler(), DDIMParallelScheduler()
    assert isinstance(ddpm, ParallelScheduler) and isinstance(ddim, ParallelScheduler)
    assert not ddpm._is_ode_scheduler and ddim._is_ode_scheduler
    ddim.set_timesteps(4)
    x = torch.zeros(2, 4, 4, 4)
    with pytest.raises(ValueError, match="eta"):
        ddim.batch_step_no_noise(x, ddim.timesteps[:2], x, eta=0.5)
    with pytest.raises(ValueError, match="one entry per sample"):
        ddim.batch_step_no_noise(x, ddim.timesteps[:3], x)


@pytest.mark.parametrize("cls", [DDPMParallelScheduler, DDIMParallelScheduler])
def test_parallel_config_interop(cls: type, tmp_path: Any) -> None:
    assert_config_interop(cls, {"beta_schedule": "scaled_linear", "timestep_spacing": "trailing"}, tmp_path)
