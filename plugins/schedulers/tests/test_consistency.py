"""CMStochasticIterativeScheduler: conformance kit, parity with Diffusers (same seed), errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.consistency import CMStochasticIterativeScheduler
from scheduler_parity import SHAPE, assert_config_interop, assert_parity, diffusers_class


class TestCMConformance(SchedulerConformance):
    scheduler_class = CMStochasticIterativeScheduler
    configs = [{}, {"clip_denoised": False, "s_noise": 0.9}]


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"clip_denoised": False},
        {"s_noise": 0.8, "rho": 5.0},
        {"num_train_timesteps": 151, "sigma_max": 40.0, "sigma_data": 0.7, "sigma_min": 0.01},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default",
)
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_parity(config: dict[str, Any], steps: int) -> None:
    assert_parity(CMStochasticIterativeScheduler, config, steps)


def test_parity_custom_timesteps() -> None:
    assert_parity(CMStochasticIterativeScheduler, {}, None, timesteps=[39, 22, 8, 0])
    assert_parity(CMStochasticIterativeScheduler, {}, None, timesteps=[22])


def test_add_noise_and_scalings_match_diffusers() -> None:
    ours, ref = CMStochasticIterativeScheduler(), diffusers_class("CMStochasticIterativeScheduler")()
    for s in (ours, ref):
        s.set_timesteps(5)
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    t = ours.timesteps[[0, 3]]
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))
    sigma = ours.sigmas[2]
    for a, b in zip(ours.get_scalings_for_boundary_condition(sigma), ref.get_scalings_for_boundary_condition(sigma)):
        torch.testing.assert_close(a, b)
    for a, b in zip(ours.get_scalings(sigma), ref.get_scalings(sigma)):
        torch.testing.assert_close(a, b)
    assert torch.equal(ours.sigmas, ref.sigmas)


def test_config_interop(tmp_path: Path) -> None:
    assert_config_interop(CMStochasticIterativeScheduler, {"num_train_timesteps": 151, "sigma_max": 40.0}, tmp_path)


def test_errors() -> None:
    s = CMStochasticIterativeScheduler()
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[3, 10])
    with pytest.raises(ValueError, match="below num_train_timesteps"):
        s.set_timesteps(timesteps=[40, 10])
    with pytest.raises(ValueError, match="sigmas="):
        s.set_timesteps(sigmas=[1.0, 0.1])
    s.set_timesteps(4)
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="integer timestep"):
        s.step(x, 3, x)
