"""DDPMScheduler, DDIMScheduler, DDIMInverseScheduler: conformance and parity with Diffusers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.ddim import DDIMInverseScheduler, DDIMScheduler
from difflux_schedulers.ddpm import DDPMScheduler
from scheduler_parity import PARITY_ATOL, PARITY_RTOL, assert_config_interop, assert_parity, run_loop, stand_in_model

VP_GRID: list[dict[str, Any]] = [
    {},
    {"timestep_spacing": "trailing", "beta_schedule": "scaled_linear"},
    {"timestep_spacing": "linspace"},
    {"steps_offset": 1},
    {"prediction_type": "v_prediction", "clip_sample": False},
    {"prediction_type": "sample", "beta_schedule": "squaredcos_cap_v2"},
    {"thresholding": True, "sample_max_value": 1.5},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"clip_sample_range": 0.5},
]


class TestDDPMConformance(SchedulerConformance):
    scheduler_class = DDPMScheduler
    configs = [{}, {"variance_type": "fixed_large", "prediction_type": "v_prediction"}]


class TestDDIMConformance(SchedulerConformance):
    scheduler_class = DDIMScheduler
    configs = [{}, {"timestep_spacing": "trailing", "thresholding": True}]


class TestDDIMInverseConformance(SchedulerConformance):
    scheduler_class = DDIMInverseScheduler
    configs = [{}, {"timestep_spacing": "trailing"}]


@pytest.mark.parametrize("config", VP_GRID)
def test_ddpm_parity(config: dict[str, Any]) -> None:
    assert_parity(DDPMScheduler, config, 10)


@pytest.mark.parametrize("variance_type", ["fixed_small_log", "fixed_large"])
def test_ddpm_variance_types_parity(variance_type: str) -> None:
    assert_parity(DDPMScheduler, {"variance_type": variance_type}, 10)


@pytest.mark.parametrize("variance_type", ["learned", "learned_range"])
def test_ddpm_learned_variance_parity(variance_type: str) -> None:
    import diffusers

    def model(x: torch.Tensor, t: Any) -> torch.Tensor:  # predicts noise and a variance channel block
        eps = stand_in_model(x, t)
        return torch.cat([eps, torch.sigmoid(x) * 0.9], dim=1)

    config: dict[str, Any] = {"variance_type": variance_type}
    _, ours = run_loop(DDPMScheduler(**config), 10, model=model)
    _, theirs = run_loop(diffusers.DDPMScheduler(**config), 10, model=model)
    torch.testing.assert_close(ours, theirs, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_ddpm_custom_timesteps_parity() -> None:
    assert_parity(DDPMScheduler, {}, None, timesteps=[900, 700, 450, 200, 50, 0])


def test_ddpm_custom_timesteps_must_descend() -> None:
    with pytest.raises(ValueError, match="descending"):
        DDPMScheduler().set_timesteps(timesteps=[10, 500])


def test_ddpm_rejects_custom_sigmas() -> None:
    with pytest.raises(ValueError, match="sigmas"):
        DDPMScheduler().set_timesteps(sigmas=[1.0, 0.0])


@pytest.mark.parametrize("config", VP_GRID)
def test_ddim_parity(config: dict[str, Any]) -> None:
    assert_parity(DDIMScheduler, config, 10)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_eta_parity(eta: float) -> None:
    assert_parity(DDIMScheduler, {"set_alpha_to_one": False}, 10, step_kwargs={"eta": eta})


def test_ddim_clipped_model_output_parity() -> None:
    assert_parity(
        DDIMScheduler, {"clip_sample_range": 0.5}, 10, step_kwargs={"eta": 0.3, "use_clipped_model_output": True}
    )


@pytest.mark.parametrize(
    "config", [{}, {"timestep_spacing": "trailing"}, {"prediction_type": "v_prediction", "set_alpha_to_one": False}]
)
def test_ddim_inverse_parity(config: dict[str, Any]) -> None:
    assert_parity(DDIMInverseScheduler, config, 10)


def test_ddim_rejects_custom_timesteps() -> None:
    with pytest.raises(ValueError, match="timesteps"):
        DDIMScheduler().set_timesteps(timesteps=[900, 100])


@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler])
def test_config_interop(cls: type, tmp_path: Path) -> None:
    assert_config_interop(cls, {"beta_schedule": "scaled_linear", "timestep_spacing": "trailing"}, tmp_path)


def test_add_noise_and_velocity_match_diffusers() -> None:
    import diffusers

    ours = DDPMScheduler()
    theirs: Any = diffusers.DDPMScheduler()
    gen = torch.Generator().manual_seed(0)
    x, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 800])
    torch.testing.assert_close(ours.add_noise(x, noise, t), theirs.add_noise(x, noise, t), atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.get_velocity(x, noise, t), theirs.get_velocity(x, noise, t), atol=1e-6, rtol=0)
