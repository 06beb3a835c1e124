"""PNDM, LMS, Heun, KDPM2 and KDPM2-ancestral: conformance and parity with Diffusers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from difflux.testing import SchedulerConformance
from difflux_schedulers.heun import HeunDiscreteScheduler
from difflux_schedulers.kdpm2 import KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from difflux_schedulers.lms import LMSDiscreteScheduler
from difflux_schedulers.pndm import PNDMScheduler
from scheduler_parity import assert_config_interop, assert_parity

# Diffusers' KDPM2 schedulers (the test oracle) call np.cumsum on a torch tensor in their _sigma_to_t, once
# per sigma of every set_timesteps; numpy 2 deprecates the __array_wrap__ that torch gives it. Not our code.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

K_GRID: list[dict[str, Any]] = [
    {},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"prediction_type": "v_prediction", "beta_schedule": "scaled_linear"},
    {"use_karras_sigmas": True},
    {"use_exponential_sigmas": True, "beta_schedule": "squaredcos_cap_v2"},
]


class TestPNDMConformance(SchedulerConformance):
    scheduler_class = PNDMScheduler
    configs = [{}, {"skip_prk_steps": True, "prediction_type": "v_prediction"}]

    def expected_num_timesteps(self, scheduler: Any, num_inference_steps: int) -> int:
        # PLMS repeats one step; the Runge-Kutta warm-up adds 3 stages to each of its 4 steps, minus the shared ends
        return num_inference_steps + (1 if scheduler.config.skip_prk_steps else 9)


class TestLMSConformance(SchedulerConformance):
    scheduler_class = LMSDiscreteScheduler
    configs = [{}, {"use_karras_sigmas": True}]


class TestHeunConformance(SchedulerConformance):
    scheduler_class = HeunDiscreteScheduler
    configs = [{}, {"use_karras_sigmas": True, "prediction_type": "v_prediction"}]


class TestKDPM2Conformance(SchedulerConformance):
    scheduler_class = KDPM2DiscreteScheduler
    configs = [{}, {"use_karras_sigmas": True}]


class TestKDPM2AncestralConformance(SchedulerConformance):
    scheduler_class = KDPM2AncestralDiscreteScheduler
    configs = [{}, {"timestep_spacing": "trailing"}]


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"skip_prk_steps": True},
        {"timestep_spacing": "trailing", "beta_schedule": "scaled_linear"},
        {"timestep_spacing": "linspace", "skip_prk_steps": True},
        {"prediction_type": "v_prediction", "set_alpha_to_one": True, "steps_offset": 1},
    ],
)
def test_pndm_parity(config: dict[str, Any]) -> None:
    assert_parity(PNDMScheduler, config, 10)


def test_pndm_too_few_steps_for_runge_kutta() -> None:
    with pytest.raises(ValueError, match="skip_prk_steps"):
        PNDMScheduler().set_timesteps(3)


# Diffusers' LMS integrand mixes numpy and torch, which numpy 2 warns about.
pytestmark_lms = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytestmark_lms
@pytest.mark.parametrize("config", [*K_GRID, {"prediction_type": "sample"}])
def test_lms_parity(config: dict[str, Any]) -> None:
    assert_parity(LMSDiscreteScheduler, config, 10)


@pytestmark_lms
def test_lms_order_2_parity() -> None:
    assert_parity(LMSDiscreteScheduler, {}, 10, step_kwargs={"order": 2})


@pytest.mark.parametrize(
    "config", [*K_GRID, {"prediction_type": "sample", "clip_sample": True}, {"beta_schedule": "exp"}]
)
def test_heun_parity(config: dict[str, Any]) -> None:
    assert_parity(HeunDiscreteScheduler, config, 10)


def test_heun_custom_timesteps_parity() -> None:
    assert_parity(HeunDiscreteScheduler, {}, None, timesteps=[999, 700, 400, 100, 10])


@pytest.mark.parametrize("config", K_GRID)
def test_kdpm2_parity(config: dict[str, Any]) -> None:
    assert_parity(KDPM2DiscreteScheduler, config, 10)


@pytest.mark.parametrize("config", K_GRID)
def test_kdpm2_ancestral_parity(config: dict[str, Any]) -> None:
    assert_parity(KDPM2AncestralDiscreteScheduler, config, 10)


@pytest.mark.parametrize("cls", [PNDMScheduler, LMSDiscreteScheduler, HeunDiscreteScheduler, KDPM2DiscreteScheduler])
def test_config_interop(cls: type, tmp_path: Path) -> None:
    assert_config_interop(cls, {"beta_schedule": "scaled_linear"}, tmp_path)
