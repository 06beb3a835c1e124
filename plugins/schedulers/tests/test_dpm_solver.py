"""DPM-Solver(++) multistep and singlestep: conformance, pure maths, and parity with Diffusers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.errors import ConfigError
from difflux.testing import SchedulerConformance
from difflux_schedulers.dpm_solver import (
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    NoiseLevel,
    data_prediction,
    dpm_solver_step,
    multistep_differences,
    noise_level,
)
from difflux_schedulers.schedules import solver_timesteps
from scheduler_parity import PARITY_ATOL, PARITY_RTOL, assert_config_interop, assert_parity, diffusers_class, run_loop

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


class TestDPMSolverMultistepConformance(SchedulerConformance):
    scheduler_class = DPMSolverMultistepScheduler
    configs = [
        {},
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
        {"solver_order": 3, "prediction_type": "v_prediction", "timestep_spacing": "trailing"},
    ]


class TestDPMSolverSinglestepConformance(SchedulerConformance):
    scheduler_class = DPMSolverSinglestepScheduler
    configs = [{}, {"solver_order": 3, "algorithm_type": "sde-dpmsolver++"}]


# -- the pure maths, against independent closed forms -------------------------------------------


def test_first_order_dpmsolver_pp_is_ddim() -> None:
    """DPM-Solver++ order 1 is the deterministic DDIM step x_t = alpha_t x0 + sigma_t eps (Lu et al. 2022, sec. 3)."""
    gen = torch.Generator().manual_seed(0)
    x, x0 = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
    s, t = noise_level(torch.tensor(3.0)), noise_level(torch.tensor(0.5))
    eps = (x - s.alpha * x0) / s.sigma
    expected = t.alpha * x0 + t.sigma * eps
    got = dpm_solver_step(x, [x0], s, t, algorithm="dpmsolver++")
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    # the noise-prediction form (DPM-Solver order 1) is the same DDIM step
    got_eps = dpm_solver_step(x, [eps], s, t, algorithm="dpmsolver")
    torch.testing.assert_close(got_eps, expected, atol=1e-6, rtol=1e-6)


def test_second_order_is_exact_for_linear_data_prediction() -> None:
    """With x0(lambda) linear in lambda, the multistep Heun update integrates the ODE exactly."""
    sig = [torch.tensor(v) for v in (4.0, 2.0, 0.7)]
    s1, s0, t = (noise_level(v) for v in sig)
    a, b = torch.tensor([0.3, -1.2]), torch.tensor([0.5, 0.25])

    def x0_at(level: NoiseLevel) -> torch.Tensor:
        return a + b * level.lam

    # exact solution of dx/dlambda = -x + alpha x0 in x/sigma form: x_t/sigma_t = x_s/sigma_s + int e^lambda x0 dlambda
    def integral(lam: torch.Tensor) -> torch.Tensor:
        return torch.exp(lam) * (a + b * (lam - 1))

    x_s = s0.alpha * x0_at(s0) + s0.sigma * torch.tensor([0.1, -0.4])
    exact = t.sigma * (x_s / s0.sigma + integral(t.lam) - integral(s0.lam))
    d = multistep_differences([x0_at(s1), x0_at(s0)], [s1, s0], t)
    got = dpm_solver_step(x_s, d, s0, t, algorithm="dpmsolver++", d1_rule="heun")
    torch.testing.assert_close(got, exact, atol=1e-5, rtol=1e-5)


def test_data_prediction_inverts_the_forward_process() -> None:
    level = noise_level(torch.tensor(1.7))
    x0, eps = torch.tensor([0.2, -0.6]), torch.tensor([1.1, 0.3])
    x = level.alpha * x0 + level.sigma * eps
    v = level.alpha * eps - level.sigma * x0
    torch.testing.assert_close(data_prediction(eps, x, level, "epsilon"), x0)
    torch.testing.assert_close(data_prediction(v, x, level, "v_prediction"), x0)
    torch.testing.assert_close(data_prediction(x0, x, level, "sample"), x0)
    with pytest.raises(ValueError, match="prediction_type"):
        data_prediction(eps, x, level, "noise")


def test_solver_timesteps() -> None:
    assert solver_timesteps(4, 1000, "linspace").tolist() == [999, 749, 500, 250]
    assert solver_timesteps(4, 1000, "leading", steps_offset=1).tolist() == [801, 601, 401, 201]
    assert solver_timesteps(4, 1000, "trailing").tolist() == [999, 749, 499, 249]
    with pytest.raises(ValueError, match="timestep_spacing"):
        solver_timesteps(4, 1000, "uniform")


# -- parity with Diffusers -------------------------------------------------------------------

MULTISTEP_GRID: list[tuple[dict[str, Any], int]] = [
    *(
        ({"solver_order": o, "algorithm_type": a, "solver_type": s}, n)
        for o in (1, 2, 3)
        for a in ("dpmsolver++", "sde-dpmsolver++")
        for s in ("midpoint", "heun")
        for n in (8, 16)
    ),
    ({"use_karras_sigmas": True}, 10),
    ({"use_karras_sigmas": True, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, 10),
    ({"use_exponential_sigmas": True}, 10),
    ({"use_beta_sigmas": True}, 10),
    ({"use_lu_lambdas": True, "solver_order": 3}, 10),
    ({"final_sigmas_type": "sigma_min"}, 10),
    ({"euler_at_final": True, "algorithm_type": "sde-dpmsolver++"}, 20),
    ({"lower_order_final": False, "solver_order": 3}, 10),
    ({"prediction_type": "v_prediction"}, 10),
    ({"prediction_type": "sample", "thresholding": True, "sample_max_value": 1.5}, 10),
    ({"timestep_spacing": "leading", "steps_offset": 1}, 10),
    ({"timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, 10),
    ({"beta_schedule": "squaredcos_cap_v2", "lambda_min_clipped": -5.1}, 10),
    ({"trained_betas": torch.linspace(0.0002, 0.03, 1000).tolist()}, 10),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3}, 10),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "thresholding": True}, 10),
    ({"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun"}, 10),
    ({"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}, 10),
]


def _id(case: tuple[dict[str, Any], int]) -> str:
    cfg, n = case
    short = {k: (v if not isinstance(v, list) else "list") for k, v in cfg.items()}
    return f"{short}-{n}"


@pytest.mark.parametrize("case", MULTISTEP_GRID, ids=[_id(c) for c in MULTISTEP_GRID])
def test_multistep_parity(case: tuple[dict[str, Any], int]) -> None:
    config, steps = case
    assert_parity(DPMSolverMultistepScheduler, config, steps)


def test_multistep_custom_timesteps_parity() -> None:
    t, _ = assert_parity(DPMSolverMultistepScheduler, {}, None, timesteps=[999, 850, 700, 500, 300, 120, 40, 5])
    assert t.tolist() == [999, 850, 700, 500, 300, 120, 40, 5]


def test_learned_variance_output_is_split_like_diffusers() -> None:
    """Models with learned variance output 2x channels; the solver keeps the first (noise) half of 3 channels."""

    def model(sample: torch.Tensor, t: Any) -> torch.Tensor:
        eps = 0.3 * torch.tanh(sample)
        return torch.cat([eps, torch.full_like(eps, 7.0)], dim=1)

    config: dict[str, Any] = {"variance_type": "learned_range"}
    ours = DPMSolverMultistepScheduler(**config)
    theirs = diffusers_class("DPMSolverMultistepScheduler")(**config)
    _, a = run_loop(ours, 8, shape=(2, 3, 8, 8), model=model)
    _, b = run_loop(theirs, 8, shape=(2, 3, 8, 8), model=model)
    torch.testing.assert_close(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_multistep_variance_noise_parity() -> None:
    ours = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    theirs = diffusers_class("DPMSolverMultistepScheduler")(algorithm_type="sde-dpmsolver++")
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    _, a = run_loop(ours, 6, step_kwargs={"variance_noise": noise})
    _, b = run_loop(theirs, 6, step_kwargs={"variance_noise": noise})
    torch.testing.assert_close(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL)


SINGLESTEP_GRID: list[tuple[dict[str, Any], int]] = [
    *(
        ({"solver_order": o, "algorithm_type": a, "solver_type": s, "lower_order_final": lof}, n)
        for o in (1, 2, 3)
        for a in ("dpmsolver++", "sde-dpmsolver++")
        for s in ("midpoint", "heun")
        for lof in (True, False)
        for n in (9, 12)
    ),
    ({"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3, "solver_type": "heun"}, 9),
    ({"final_sigmas_type": "sigma_min", "lower_order_final": False, "solver_order": 3}, 12),
    ({"use_karras_sigmas": True}, 10),
    ({"use_exponential_sigmas": True}, 10),
    ({"use_beta_sigmas": True}, 10),
    ({"prediction_type": "v_prediction", "beta_schedule": "scaled_linear"}, 10),
    ({"prediction_type": "sample", "thresholding": True}, 10),
    ({"use_flow_sigmas": True, "prediction_type": "flow_prediction", "flow_shift": 3.0}, 10),
]


@pytest.mark.parametrize("case", SINGLESTEP_GRID, ids=[_id(c) for c in SINGLESTEP_GRID])
def test_singlestep_parity(case: tuple[dict[str, Any], int]) -> None:
    config, steps = case
    assert_parity(DPMSolverSinglestepScheduler, config, steps)


def test_singlestep_custom_timesteps_parity() -> None:
    assert_parity(DPMSolverSinglestepScheduler, {}, None, timesteps=[999, 800, 600, 400, 200, 100, 50, 10])


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}),
        (DPMSolverMultistepScheduler, {"lambda_min_clipped": -5.1, "beta_schedule": "squaredcos_cap_v2"}),
        (DPMSolverSinglestepScheduler, {"solver_order": 3, "final_sigmas_type": "sigma_min"}),
    ],
)
def test_config_interop(cls: type, config: dict[str, Any], tmp_path: Path) -> None:
    assert_config_interop(cls, config, tmp_path)


@pytest.mark.parametrize(
    "source",
    ["UniPCMultistepScheduler", "EulerDiscreteScheduler", "DDIMScheduler", "DPMSolverSinglestepScheduler"],
)
def test_from_compatible_config_matches_diffusers(source: str) -> None:
    """Swapping schedulers: DPMSolverMultistepScheduler.from_config(other.config) maps options like Diffusers."""
    theirs_src = diffusers_class(source)(beta_schedule="scaled_linear", prediction_type="v_prediction")
    on_disk = json.loads(theirs_src.to_json_string())  # what a pipeline folder holds
    theirs = diffusers_class("DPMSolverMultistepScheduler").from_config(on_disk)
    ours = DPMSolverMultistepScheduler.from_config(on_disk)
    for key in ("algorithm_type", "solver_type", "beta_schedule", "prediction_type", "timestep_spacing"):
        assert ours.config[key] == theirs.config[key], key
    assert DPMSolverMultistepScheduler.__name__ in DPMSolverMultistepScheduler._compatibles
    assert source in DPMSolverMultistepScheduler._compatibles
    _, a = run_loop(ours, 8)
    _, b = run_loop(theirs, 8)
    torch.testing.assert_close(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_from_deis_config_maps_solver_names() -> None:
    """A DEIS config ('deis' / 'logrho') becomes DPM-Solver++ midpoint (Diffusers 0.42 itself raises here)."""
    on_disk = json.loads(diffusers_class("DEISMultistepScheduler")(solver_order=3).to_json_string())
    ours = DPMSolverMultistepScheduler.from_config(on_disk)
    assert (ours.config["algorithm_type"], ours.config["solver_type"]) == ("dpmsolver++", "midpoint")
    assert ours.config["solver_order"] == 3
    _, a = run_loop(ours, 8)
    _, b = run_loop(diffusers_class("DPMSolverMultistepScheduler")(solver_order=3), 8)
    torch.testing.assert_close(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_set_begin_index_and_add_noise_parity() -> None:
    ours, theirs = DPMSolverMultistepScheduler(), diffusers_class("DPMSolverMultistepScheduler")()
    for s in (ours, theirs):
        s.set_timesteps(10)
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = ours.timesteps[3:4].repeat(2)
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
    for s in (ours, theirs):
        s.set_begin_index(3)
    torch.testing.assert_close(ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t))
    # img2img: start the loop part-way
    x_ours, x_theirs = ours.add_noise(x0, noise, t), theirs.add_noise(x0, noise, t)
    for tt in ours.timesteps[3:]:
        x_ours = ours.step(0.3 * torch.tanh(x_ours), tt, x_ours, return_dict=False)[0]
        x_theirs = theirs.step(0.3 * torch.tanh(x_theirs), tt, x_theirs).prev_sample
    torch.testing.assert_close(x_ours, x_theirs, atol=PARITY_ATOL, rtol=PARITY_RTOL)


# -- clear errors ----------------------------------------------------------------------------


def test_errors() -> None:
    with pytest.raises(ValueError, match="final_sigmas_type"):
        DPMSolverMultistepScheduler(algorithm_type="dpmsolver")
    with pytest.raises(ValueError, match="solver_order"):
        DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min", solver_order=3)
    with pytest.raises(ValueError, match="only one of"):
        DPMSolverMultistepScheduler(use_karras_sigmas=True, use_beta_sigmas=True)
    with pytest.raises(ConfigError, match="algorithm_type"):
        DPMSolverMultistepScheduler(algorithm_type="heun")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="prediction_type"):
        DPMSolverMultistepScheduler(prediction_type="noise")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="timestep_spacing"):
        DPMSolverMultistepScheduler(timestep_spacing="uniform")  # type: ignore[arg-type]
    karras = DPMSolverMultistepScheduler(use_karras_sigmas=True)
    with pytest.raises(ValueError, match="custom timesteps"):
        karras.set_timesteps(timesteps=[900, 500, 100])
    with pytest.raises(ValueError, match="exactly one"):
        karras.set_timesteps(4, timesteps=[900, 500, 100])
    with pytest.raises(ValueError, match="sigmas"):
        karras.set_timesteps(sigmas=[3.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="outside"):
        DPMSolverMultistepScheduler().set_timesteps(timesteps=[1000, 500])
    single = DPMSolverSinglestepScheduler(use_karras_sigmas=True)
    with pytest.raises(ValueError, match="custom timesteps"):
        single.set_timesteps(timesteps=[900, 500, 100])
