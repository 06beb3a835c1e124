"""EulerDiscreteScheduler and EulerAncestralDiscreteScheduler: conformance and parity with Diffusers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from scheduler_parity import assert_config_interop, assert_parity

EULER_GRID: list[dict[str, Any]] = [
    {},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "leading", "steps_offset": 1, "beta_schedule": "scaled_linear"},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2"},
    {"use_karras_sigmas": True},
    {"use_exponential_sigmas": True},
    {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 10.0},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"interpolation_type": "log_linear"},
    {"final_sigmas_type": "sigma_min"},
    {"timestep_type": "continuous", "prediction_type": "v_prediction"},
    {"trained_betas": torch.linspace(0.0001, 0.02, 1000).tolist()},
]

ANCESTRAL_GRID: list[dict[str, Any]] = [
    {},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "leading", "steps_offset": 1, "beta_schedule": "scaled_linear"},
    {"prediction_type": "v_prediction"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
]


class TestEulerConformance(SchedulerConformance):
    scheduler_class = EulerDiscreteScheduler
    configs = [{}, {"use_karras_sigmas": True, "prediction_type": "v_prediction"}]


class TestEulerAncestralConformance(SchedulerConformance):
    scheduler_class = EulerAncestralDiscreteScheduler
    configs = [{}, {"timestep_spacing": "leading", "steps_offset": 1}]


@pytest.mark.parametrize("config", EULER_GRID)
def test_euler_parity(config: dict[str, Any]) -> None:
    assert_parity(EulerDiscreteScheduler, config, 10)


def test_euler_custom_timesteps_parity() -> None:
    assert_parity(EulerDiscreteScheduler, {}, None, timesteps=[999, 700, 400, 100, 10])


def test_euler_custom_sigmas_parity() -> None:
    assert_parity(EulerDiscreteScheduler, {}, None, sigmas=[14.0, 8.0, 3.0, 1.0, 0.2, 0.0])


def test_euler_churn_parity() -> None:
    # s_churn > 0 draws noise from the generator: same seed, same numbers
    assert_parity(EulerDiscreteScheduler, {}, 10, step_kwargs={"s_churn": 1.0, "s_noise": 1.003})


@pytest.mark.parametrize("config", ANCESTRAL_GRID)
def test_euler_ancestral_parity(config: dict[str, Any]) -> None:
    assert_parity(EulerAncestralDiscreteScheduler, config, 10)


@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, EulerAncestralDiscreteScheduler])
def test_config_interop(cls: type, tmp_path: Path) -> None:
    assert_config_interop(cls, {"beta_schedule": "scaled_linear", "prediction_type": "v_prediction"}, tmp_path)


def test_karras_with_custom_timesteps_is_rejected() -> None:
    s = EulerDiscreteScheduler(use_karras_sigmas=True)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        s.set_timesteps(timesteps=[900, 500, 100])


def test_two_sigma_ramps_are_rejected() -> None:
    with pytest.raises(ValueError, match="at most one"):
        EulerDiscreteScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)


def test_unknown_options_are_rejected_at_construction() -> None:
    from difflux.errors import ConfigError

    with pytest.raises(ConfigError, match="prediction_type"):
        EulerDiscreteScheduler(prediction_type="noise")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timestep_spacing"):
        EulerDiscreteScheduler(timestep_spacing="uniform")  # type: ignore[arg-type]


def test_ancestral_rejects_custom_sigmas() -> None:
    s = EulerAncestralDiscreteScheduler()
    with pytest.raises(ValueError, match="sigmas"):
        s.set_timesteps(sigmas=[1.0, 0.0])


def test_add_noise_matches_diffusers() -> None:
    import diffusers

    ours = EulerDiscreteScheduler()
    theirs: Any = diffusers.EulerDiscreteScheduler()
    ours.set_timesteps(10)
    theirs.set_timesteps(10)
    gen = torch.Generator().manual_seed(0)
    x, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = ours.timesteps[[2, 5]]
    torch.testing.assert_close(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t), atol=1e-6, rtol=0)
