"""UniPC multistep: conformance, pure maths, and parity with Diffusers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difflux.errors import ConfigError
from difflux.testing import SchedulerConformance
from difflux_schedulers.dpm_solver import DPMSolverMultistepScheduler, dpm_solver_step, noise_level
from difflux_schedulers.unipc import UniPCMultistepScheduler, unipc_predict, unipc_system
from scheduler_parity import PARITY_ATOL, PARITY_RTOL, assert_config_interop, assert_parity, diffusers_class, run_loop

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


class TestUniPCConformance(SchedulerConformance):
    scheduler_class = UniPCMultistepScheduler
    configs = [{}, {"solver_order": 3, "use_karras_sigmas": True, "solver_type": "bh1"}]


# -- the pure maths --------------------------------------------------------------------------


def test_first_order_predictor_is_dpm_solver_pp_first_order() -> None:
    """UniP-1 (no history) is the exponential-Euler / DDIM step of DPM-Solver++ (Zhao et al. 2023, sec. 3.1)."""
    gen = torch.Generator().manual_seed(0)
    x, x0 = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
    s, t = noise_level(torch.tensor(2.0)), noise_level(torch.tensor(0.4))
    got = unipc_predict(x, x0, s, t, [], predict_x0=True, variant="bh2")
    torch.testing.assert_close(got, dpm_solver_step(x, [x0], s, t, algorithm="dpmsolver++"), atol=1e-6, rtol=1e-6)


def test_bh2_system_second_order_weight() -> None:
    """For order 2 the UniC weight on D1_t is b_1 / B(h) with R = [[r, 1], [1, 1]] solved exactly."""
    h = torch.tensor(0.8)
    rks = [torch.tensor(-0.5)]
    h_phi_1, b_h, r, b = unipc_system(h, rks, predict_x0=True, variant="bh2")
    hh = -h
    assert torch.allclose(h_phi_1, torch.expm1(hh)) and torch.allclose(b_h, torch.expm1(hh))
    phi_2 = torch.expm1(hh) / hh - 1  # h phi_2 (h) / h
    phi_3 = phi_2 / hh - 0.5
    expected_b = torch.stack([phi_2 / b_h, 2 * phi_3 / b_h])
    torch.testing.assert_close(b, expected_b)
    torch.testing.assert_close(r, torch.tensor([[1.0, 1.0], [-0.5, 1.0]]))


# -- parity with Diffusers -------------------------------------------------------------------

GRID: list[tuple[dict[str, Any], int]] = [
    *(({"solver_order": o}, n) for o in (1, 2, 3) for n in (8, 16)),
    *(
        ({"solver_order": o, "solver_type": st, "predict_x0": px0, "final_sigmas_type": "sigma_min"}, 10)
        for o in (2, 3)
        for st in ("bh1", "bh2")
        for px0 in (True, False)
    ),
    ({"solver_order": 3, "lower_order_final": False, "final_sigmas_type": "sigma_min"}, 10),
    ({"disable_corrector": [0, 2]}, 10),
    ({"use_karras_sigmas": True}, 10),
    ({"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "sigma_min": 0.1, "sigma_max": 10.0}, 10),
    ({"use_exponential_sigmas": True}, 10),
    ({"use_beta_sigmas": True}, 10),
    ({"prediction_type": "v_prediction"}, 10),
    ({"prediction_type": "v_prediction", "predict_x0": False, "final_sigmas_type": "sigma_min"}, 10),
    ({"prediction_type": "sample", "thresholding": True}, 10),
    ({"timestep_spacing": "leading", "steps_offset": 1}, 10),
    ({"timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, 10),
    ({"beta_schedule": "squaredcos_cap_v2"}, 10),
    ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "solver_order": 4}, 10),
    ({"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}, 10),
    ({"use_flow_sigmas": True, "prediction_type": "flow_prediction", "shift_terminal": 0.1}, 10),
]


def _id(case: tuple[dict[str, Any], int]) -> str:
    return f"{case[0]}-{case[1]}"


@pytest.mark.parametrize("case", GRID, ids=[_id(c) for c in GRID])
def test_parity(case: tuple[dict[str, Any], int]) -> None:
    config, steps = case
    assert_parity(UniPCMultistepScheduler, config, steps)


def test_custom_flow_sigmas_and_dynamic_shift_parity() -> None:
    sigmas = [1.0, 0.8, 0.6, 0.4, 0.2, 0.1]
    config: dict[str, Any] = {
        "use_flow_sigmas": True,
        "prediction_type": "flow_prediction",
        "use_dynamic_shifting": True,
    }
    ours, theirs = UniPCMultistepScheduler(**config), diffusers_class("UniPCMultistepScheduler")(**config)
    ours.set_timesteps(sigmas=sigmas, mu=0.7)
    theirs.set_timesteps(sigmas=np.array(sigmas), mu=0.7)  # Diffusers needs an array here
    assert torch.equal(ours.timesteps, theirs.timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    x_ours = x_theirs = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps:
        x_ours = ours.step(0.3 * torch.tanh(x_ours), t, x_ours, return_dict=False)[0]
        x_theirs = theirs.step(0.3 * torch.tanh(x_theirs), t, x_theirs).prev_sample
    torch.testing.assert_close(x_ours, x_theirs, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_solver_p_parity() -> None:
    """A separate predictor scheduler (``solver_p``) replaces UniP, as in Diffusers."""
    ours = UniPCMultistepScheduler(solver_p=DPMSolverMultistepScheduler(solver_order=1))
    theirs = diffusers_class("UniPCMultistepScheduler")(
        solver_p=diffusers_class("DPMSolverMultistepScheduler")(solver_order=1)
    )
    _, a = run_loop(ours, 8)
    _, b = run_loop(theirs, 8)
    torch.testing.assert_close(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    assert "solver_p" not in ours.config  # an object, not a setting


@pytest.mark.parametrize("config", [{}, {"use_karras_sigmas": True, "solver_type": "bh1", "disable_corrector": [1]}])
def test_config_interop(config: dict[str, Any], tmp_path: Path) -> None:
    assert_config_interop(UniPCMultistepScheduler, config, tmp_path)


@pytest.mark.parametrize("source", ["DPMSolverMultistepScheduler", "DEISMultistepScheduler", "EulerDiscreteScheduler"])
def test_from_compatible_config_matches_diffusers(source: str) -> None:
    on_disk = json.loads(diffusers_class(source)(prediction_type="v_prediction").to_json_string())
    theirs = diffusers_class("UniPCMultistepScheduler").from_config(on_disk)
    ours = UniPCMultistepScheduler.from_config(on_disk)
    for key in ("solver_type", "prediction_type", "timestep_spacing", "solver_order"):
        assert ours.config[key] == theirs.config[key], key
    _, a = run_loop(ours, 8)
    _, b = run_loop(theirs, 8)
    torch.testing.assert_close(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_errors() -> None:
    with pytest.raises(ValueError, match="use_flow_sigmas"):
        UniPCMultistepScheduler().set_timesteps(sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="timesteps"):
        UniPCMultistepScheduler().set_timesteps(timesteps=[900, 500])
    with pytest.raises(ValueError, match="mu"):
        UniPCMultistepScheduler(use_flow_sigmas=True, use_dynamic_shifting=True).set_timesteps(4)
    with pytest.raises(ValueError, match="shift_terminal"):
        UniPCMultistepScheduler(shift_terminal=0.1)
    with pytest.raises(ValueError, match="solver_order"):
        UniPCMultistepScheduler(solver_order=0)
    with pytest.raises(ConfigError, match="solver_type"):
        UniPCMultistepScheduler(solver_type="bh3")  # type: ignore[arg-type]
