"""DEIS multistep: conformance, pure maths, and parity with Diffusers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.deis import DEISMultistepScheduler, deis_step
from difflux_schedulers.dpm_solver import NoiseLevel, noise_level
from scheduler_parity import PARITY_ATOL, PARITY_RTOL, assert_config_interop, assert_parity, diffusers_class, run_loop

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


class TestDEISConformance(SchedulerConformance):
    scheduler_class = DEISMultistepScheduler
    configs = [{}, {"solver_order": 3, "use_karras_sigmas": True}]


def _exact_constant_eps(x: torch.Tensor, eps: torch.Tensor, s: NoiseLevel, t: NoiseLevel) -> torch.Tensor:
    """x_t for a constant noise prediction: x/alpha moves linearly in rho = sigma/alpha (DDIM in rho)."""
    rho_s, rho_t = s.sigma / s.alpha, t.sigma / t.alpha
    return t.alpha * (x / s.alpha + (rho_t - rho_s) * eps)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_is_exact_for_constant_noise(order: int) -> None:
    """Every order integrates a constant eps exactly (the Lagrange weights sum to one)."""
    gen = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
    levels = [noise_level(torch.tensor(v)) for v in (6.0, 3.0, 1.5)][-order:]
    t = noise_level(torch.tensor(0.6))
    got = deis_step(x, [eps] * order, levels, t)
    torch.testing.assert_close(got, _exact_constant_eps(x, eps, levels[-1], t), atol=1e-5, rtol=1e-5)


GRID: list[tuple[dict[str, Any], int]] = [
    *(({"solver_order": o, "lower_order_final": lof}, n) for o in (1, 2, 3) for lof in (True, False) for n in (8, 16)),
    ({"use_karras_sigmas": True}, 10),
    ({"use_exponential_sigmas": True, "solver_order": 3}, 10),
    ({"use_beta_sigmas": True}, 10),
    ({"prediction_type": "v_prediction", "solver_order": 3}, 10),
    ({"prediction_type": "sample", "thresholding": True}, 10),
    ({"timestep_spacing": "leading", "steps_offset": 1}, 10),
    ({"timestep_spacing": "trailing"}, 10),
    ({"beta_schedule": "squaredcos_cap_v2"}, 10),
    ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, 10),
    ({"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}, 10),
]


@pytest.mark.parametrize("case", GRID, ids=[f"{c[0]}-{c[1]}" for c in GRID])
def test_parity(case: tuple[dict[str, Any], int]) -> None:
    config, steps = case
    assert_parity(DEISMultistepScheduler, config, steps)


@pytest.mark.parametrize("config", [{}, {"solver_order": 3, "use_karras_sigmas": True}])
def test_config_interop(config: dict[str, Any], tmp_path: Path) -> None:
    assert_config_interop(DEISMultistepScheduler, config, tmp_path)


@pytest.mark.parametrize("source", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DDPMScheduler"])
def test_from_compatible_config_matches_diffusers(source: str) -> None:
    on_disk = json.loads(diffusers_class(source)(beta_schedule="scaled_linear").to_json_string())
    theirs = diffusers_class("DEISMultistepScheduler").from_config(on_disk)
    ours = DEISMultistepScheduler.from_config(on_disk)
    for key in ("algorithm_type", "solver_type", "beta_schedule", "timestep_spacing"):
        assert ours.config[key] == theirs.config[key], key
    _, a = run_loop(ours, 8)
    _, b = run_loop(theirs, 8)
    torch.testing.assert_close(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_errors() -> None:
    with pytest.raises(ValueError, match="timesteps"):
        DEISMultistepScheduler().set_timesteps(timesteps=[900, 500])
    with pytest.raises(ValueError, match="sigmas"):
        DEISMultistepScheduler().set_timesteps(sigmas=[3.0, 1.0])
    with pytest.raises(ValueError, match="only one of"):
        DEISMultistepScheduler(use_karras_sigmas=True, use_exponential_sigmas=True)
