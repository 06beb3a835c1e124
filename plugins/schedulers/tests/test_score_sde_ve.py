"""ScoreSdeVeScheduler: conformance kit (step = predictor), predictor-corrector parity with Diffusers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.score_sde_ve import ScoreSdeVeScheduler
from scheduler_parity import PARITY_ATOL, PARITY_RTOL, SHAPE, assert_config_interop, diffusers_class, stand_in_model


class TestScoreSdeVeConformance(SchedulerConformance):
    scheduler_class = ScoreSdeVeScheduler
    configs = [{"num_train_timesteps": 50}, {"num_train_timesteps": 20, "sigma_max": 50.0, "snr": 0.3}]
    rejects_unknown_timestep = False  # continuous time: any t in [sampling_eps, 1] is valid


def _pipeline_loop(scheduler: Any, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loop of Diffusers' ScoreSdeVePipeline: corrector steps, then the predictor."""
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(SHAPE, generator=gen) * scheduler.init_noise_sigma
    scheduler.set_timesteps(n)
    scheduler.set_sigmas(n)
    sample_mean = sample
    for i, t in enumerate(scheduler.timesteps):
        sigma_t = scheduler.sigmas[i] * torch.ones(SHAPE[0])
        for _ in range(scheduler.config.correct_steps):
            score = stand_in_model(sample, sigma_t) / sigma_t[0]
            sample = scheduler.step_correct(score, sample, generator=gen).prev_sample
        score = stand_in_model(sample, sigma_t) / sigma_t[0]
        out = scheduler.step_pred(score, t, sample, generator=gen)
        sample, sample_mean = out.prev_sample, out.prev_sample_mean
    return scheduler.timesteps, sample, sample_mean


@pytest.mark.parametrize(
    "config",
    [
        {"num_train_timesteps": 100},
        {"num_train_timesteps": 100, "sigma_max": 50.0, "snr": 0.3, "correct_steps": 2},
        {"num_train_timesteps": 100, "sigma_min": 0.1, "sampling_eps": 1e-3, "correct_steps": 0},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
@pytest.mark.parametrize("steps", [2, 10])
def test_parity_pipeline_loop(config: dict[str, Any], steps: int) -> None:
    t_ours, x_ours, m_ours = _pipeline_loop(ScoreSdeVeScheduler(**config), steps)
    t_ref, x_ref, m_ref = _pipeline_loop(diffusers_class("ScoreSdeVeScheduler")(**config), steps)
    assert torch.equal(t_ours, t_ref)
    torch.testing.assert_close(x_ours, x_ref, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    torch.testing.assert_close(m_ours, m_ref, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_schedules_match_diffusers() -> None:
    ours, ref = ScoreSdeVeScheduler(), diffusers_class("ScoreSdeVeScheduler")()
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert torch.equal(ours.sigmas, ref.sigmas) and torch.equal(ours.discrete_sigmas, ref.discrete_sigmas)
    for s in (ours, ref):
        s.set_timesteps(30)
        s.set_sigmas(30)
    assert torch.equal(ours.sigmas, ref.sigmas) and torch.equal(ours.discrete_sigmas, ref.discrete_sigmas)


def test_step_is_step_pred_and_per_sample_times_match() -> None:
    ours, ref = ScoreSdeVeScheduler(num_train_timesteps=100), diffusers_class("ScoreSdeVeScheduler")(
        num_train_timesteps=100
    )
    for s in (ours, ref):
        s.set_timesteps(10)
        s.set_sigmas(10)
    gen = torch.Generator().manual_seed(0)
    x, score = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    t = ours.timesteps[3]
    a = ours.step(score, t, x, generator=torch.Generator().manual_seed(1), return_dict=False)
    b = ref.step_pred(score, t, x, generator=torch.Generator().manual_seed(1), return_dict=False)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    per_sample = ours.timesteps[[2, 6]]
    a = ours.step_pred(score, per_sample, x, generator=torch.Generator().manual_seed(2)).prev_sample
    b = ref.step_pred(score, per_sample, x, generator=torch.Generator().manual_seed(2)).prev_sample
    torch.testing.assert_close(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_add_noise_matches_diffusers_for_level_indices() -> None:
    ours, ref = ScoreSdeVeScheduler(num_train_timesteps=100), diffusers_class("ScoreSdeVeScheduler")(
        num_train_timesteps=100
    )
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    k = torch.tensor([3, 90])
    torch.testing.assert_close(ours.add_noise(x0, noise, k), ref.add_noise(x0, noise, k))
    ours.set_timesteps(10)
    t = ours.timesteps[[0, 9]]  # times in [eps, 1] map to levels (n - 1) t
    expected = x0 + noise * ours.discrete_sigmas[[9, 0]].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(ours.add_noise(x0, noise, t), expected)


def test_config_interop(tmp_path: Path) -> None:
    assert_config_interop(ScoreSdeVeScheduler, {"num_train_timesteps": 100, "snr": 0.2}, tmp_path)


def test_errors() -> None:
    s = ScoreSdeVeScheduler(num_train_timesteps=10)
    with pytest.raises(ValueError, match="timesteps="):
        s.set_timesteps(timesteps=[1.0, 0.5])
    x = torch.zeros(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step_correct(x, x)
