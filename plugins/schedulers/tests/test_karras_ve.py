"""KarrasVeScheduler: conformance kit (protocol form of step), parity with Diffusers' deprecated scheduler."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.karras_ve import KarrasVeScheduler
from scheduler_parity import PARITY_ATOL, PARITY_RTOL, SHAPE, assert_config_interop, stand_in_model


def _reference_class() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from diffusers.schedulers.deprecated import KarrasVeScheduler as Reference
    return Reference


class TestKarrasVeConformance(SchedulerConformance):
    scheduler_class = KarrasVeScheduler
    configs = [{}, {"sigma_max": 10.0, "s_churn": 0.0}]

    def expected_num_timesteps(self, scheduler: Any, num_inference_steps: int) -> int:
        return num_inference_steps  # order 2 counts the Heun correction, not extra timesteps


def _pipeline_loop(scheduler: Any, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop of Diffusers' KarrasVePipeline: churn, Euler predictor, Heun correction."""
    scheduler.set_timesteps(n)
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(SHAPE, generator=gen) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        sigma = scheduler.schedule[t]
        sigma_prev = scheduler.schedule[t - 1] if t > 0 else 0
        sample_hat, sigma_hat = scheduler.add_noise_to_input(sample, sigma, generator=gen)
        model_output = sigma_hat / 2 * stand_in_model((sample_hat + 1) / 2, sigma_hat / 2)
        out = scheduler.step(model_output, sigma_hat, sigma_prev, sample_hat)
        if sigma_prev != 0:
            model_output = sigma_prev / 2 * stand_in_model((out.prev_sample + 1) / 2, sigma_prev / 2)
            out = scheduler.step_correct(
                model_output, sigma_hat, sigma_prev, sample_hat, out.prev_sample, out["derivative"]
            )
        sample = out.prev_sample
    return scheduler.timesteps, sample


@pytest.mark.parametrize(
    "config",
    [{}, {"sigma_max": 10.0, "sigma_min": 0.5}, {"s_churn": 5.0, "s_min": 0.0, "s_max": 1e9, "s_noise": 1.0}],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default",
)
@pytest.mark.parametrize("steps", [2, 6])
def test_parity_pipeline_loop(config: dict[str, Any], steps: int) -> None:
    t_ours, x_ours = _pipeline_loop(KarrasVeScheduler(**config), steps)
    t_ref, x_ref = _pipeline_loop(_reference_class()(**config), steps)
    assert torch.equal(t_ours, t_ref)
    scale = max(1.0, float(x_ref.abs().max()))
    torch.testing.assert_close(x_ours, x_ref, atol=PARITY_ATOL * scale, rtol=PARITY_RTOL)


def test_schedule_matches_diffusers() -> None:
    ours, ref = KarrasVeScheduler(), _reference_class()()
    ours.set_timesteps(7)
    ref.set_timesteps(7)
    assert torch.equal(ours.schedule, ref.schedule)
    assert ours.init_noise_sigma == ref.init_noise_sigma


def test_protocol_step_is_the_churn_free_euler_step() -> None:
    s = KarrasVeScheduler()
    s.set_timesteps(5)
    sample = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    t = s.timesteps[1]
    sigma, sigma_prev = s.schedule[t], s.schedule[t - 1]
    expected = s.step(eps, sigma, sigma_prev, sample).prev_sample
    torch.testing.assert_close(s.step(eps, t, sample).prev_sample, expected)
    # and it is the Euler step of dx/dsigma = -eps
    torch.testing.assert_close(expected, sample - (sigma_prev - sigma) * eps)


def test_add_noise_uses_the_schedule() -> None:
    s = KarrasVeScheduler()
    s.set_timesteps(4)
    x0, noise = torch.zeros(SHAPE), torch.ones(SHAPE)
    noisy = s.add_noise(x0, noise, torch.tensor([0, 3]))
    assert noisy[0].unique().item() == pytest.approx(float(s.schedule[0]))
    assert noisy[1].unique().item() == pytest.approx(float(s.schedule[3]))


def test_config_interop(tmp_path: Path) -> None:
    assert_config_interop(KarrasVeScheduler, {"sigma_max": 50.0, "s_churn": 10.0}, tmp_path)


def test_errors() -> None:
    s = KarrasVeScheduler()
    with pytest.raises(ValueError, match=">= 2"):
        s.set_timesteps(1)
    with pytest.raises(ValueError, match="timesteps="):
        s.set_timesteps(timesteps=[3, 2, 1])
    s.set_timesteps(3)
    x = torch.zeros(SHAPE)
    with pytest.raises(TypeError, match="sample_hat"):
        s.step(x, 1.0, 0.5)
