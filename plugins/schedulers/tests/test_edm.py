"""EDMEulerScheduler: conformance kit, parity with Diffusers (with and without churn), errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.edm import EDMEulerScheduler
from scheduler_parity import (
    PARITY_ATOL,
    PARITY_RTOL,
    SHAPE,
    assert_config_interop,
    assert_parity,
    diffusers_class,
    stand_in_model,
)


class TestEDMEulerConformance(SchedulerConformance):
    scheduler_class = EDMEulerScheduler
    configs = [{}, {"sigma_schedule": "exponential", "prediction_type": "v_prediction"}]


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"prediction_type": "v_prediction"},
        {"final_sigmas_type": "sigma_min"},
        {"sigma_schedule": "exponential"},
        {"sigma_schedule": "exponential", "final_sigmas_type": "sigma_min", "sigma_max": 20.0},
        {"rho": 5.0, "sigma_min": 0.01, "sigma_data": 1.0},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default",
)
def test_parity(config: dict[str, Any]) -> None:
    assert_parity(EDMEulerScheduler, config, 10)


@pytest.mark.parametrize("schedule", ["karras", "exponential"])
def test_parity_with_churn(schedule: str) -> None:
    churn = {"s_churn": 4.0, "s_tmin": 0.05, "s_tmax": 30.0, "s_noise": 1.003}
    assert_parity(EDMEulerScheduler, {"sigma_schedule": schedule}, 10, step_kwargs=churn)


def test_parity_custom_ramp() -> None:
    """``sigmas=`` are ramp positions in [0, 1], as in Diffusers (which needs a tensor)."""
    ramp = torch.tensor([0.0, 0.2, 0.45, 0.7, 1.0])
    finals = []
    for s in (EDMEulerScheduler(), diffusers_class("EDMEulerScheduler")()):
        s.set_timesteps(sigmas=ramp)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
        for t in s.timesteps:
            x = s.step(stand_in_model(s.scale_model_input(x, t), t), t, x).prev_sample
        finals.append((s.timesteps, x))
    assert torch.equal(finals[0][0], finals[1][0])
    torch.testing.assert_close(finals[0][1], finals[1][1], atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_preconditioning_and_add_noise_match_diffusers() -> None:
    ours, ref = EDMEulerScheduler(prediction_type="v_prediction"), diffusers_class("EDMEulerScheduler")(
        prediction_type="v_prediction"
    )
    for s in (ours, ref):
        s.set_timesteps(6)
    gen = torch.Generator().manual_seed(0)
    x, out = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    sigma = ours.sigmas[2]
    torch.testing.assert_close(ours.precondition_inputs(x, sigma), ref.precondition_inputs(x, sigma))
    torch.testing.assert_close(ours.precondition_outputs(x, out, sigma), ref.precondition_outputs(x, out, sigma))
    torch.testing.assert_close(ours.precondition_noise(sigma), ref.precondition_noise(sigma))
    t = ours.timesteps[[1, 4]]
    torch.testing.assert_close(ours.add_noise(x, out, t), ref.add_noise(x, out, t))
    assert ours.init_noise_sigma == pytest.approx(ref.init_noise_sigma)


def test_pred_original_sample_override() -> None:
    s = EDMEulerScheduler()
    s.set_timesteps(4)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
    t = s.timesteps[0]
    x0 = torch.zeros(SHAPE)
    out = s.step(torch.randn(SHAPE), t, x, pred_original_sample=x0)
    ratio = float(s.sigmas[1] / s.sigmas[0])
    torch.testing.assert_close(out.prev_sample, x * ratio)


def test_config_interop(tmp_path: Path) -> None:
    assert_config_interop(EDMEulerScheduler, {"sigma_schedule": "exponential", "sigma_max": 40.0}, tmp_path)


def test_errors() -> None:
    s = EDMEulerScheduler()
    with pytest.raises(ValueError, match="timesteps="):
        s.set_timesteps(timesteps=[1.0, 0.5])
    s.set_timesteps(4)
    x = torch.zeros(SHAPE)
    with pytest.raises(ValueError, match="integer timestep"):
        s.step(x, torch.tensor(3), x)
