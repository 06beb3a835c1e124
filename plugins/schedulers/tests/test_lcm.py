"""LCMScheduler: conformance kit, parity with Diffusers (stochastic: same seed), errors."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.lcm import LCMScheduler
from scheduler_parity import (
    PARITY_ATOL,
    PARITY_RTOL,
    SHAPE,
    assert_config_interop,
    assert_parity,
    diffusers_class,
    run_loop,
)

logging.getLogger("diffusers").setLevel(logging.ERROR)


class TestLCMConformance(SchedulerConformance):
    scheduler_class = LCMScheduler
    configs = [{}, {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True}]


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"prediction_type": "v_prediction", "beta_schedule": "linear"},
        {"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.5},
        {"prediction_type": "sample", "thresholding": True, "sample_max_value": 1.5},
        {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "set_alpha_to_one": False},
        {"beta_schedule": "squaredcos_cap_v2", "timestep_scaling": 5.0},
        {
            "num_train_timesteps": 100,
            "trained_betas": torch.linspace(1e-3, 0.05, 100).tolist(),
            "original_inference_steps": 20,
        },
        {"num_train_timesteps": 500, "original_inference_steps": 25, "steps_offset": 1, "timestep_spacing": "trailing"},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items() if k != "trained_betas") or "default",
)
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_parity(config: dict[str, Any], steps: int) -> None:
    assert_parity(LCMScheduler, config, steps)


def test_parity_custom_timesteps() -> None:
    assert_parity(LCMScheduler, {}, None, timesteps=[999, 759, 499, 259])
    assert_parity(LCMScheduler, {}, None, timesteps=[999, 700, 301, 60])  # off the distillation schedule


@pytest.mark.parametrize(
    ("n", "set_kwargs"),
    [
        (4, {"original_inference_steps": 30, "strength": 0.6}),
        (6, {"original_inference_steps": 100}),
        (None, {"timesteps": [759, 499, 259, 19], "strength": 0.5}),
    ],
)
def test_parity_set_timesteps_options(n: int | None, set_kwargs: dict[str, Any]) -> None:
    results = []
    for s in (LCMScheduler(), diffusers_class("LCMScheduler")()):
        s.set_timesteps = functools.partial(s.set_timesteps, **set_kwargs)  # type: ignore[method-assign]
        results.append(run_loop(s, n))
    (t_ours, x_ours), (t_ref, x_ref) = results
    assert torch.equal(t_ours, t_ref), (t_ours.tolist(), t_ref.tolist())
    torch.testing.assert_close(x_ours, x_ref, atol=PARITY_ATOL, rtol=PARITY_RTOL)


def test_tuple_output_and_denoised_match_diffusers() -> None:
    ours, ref = LCMScheduler(), diffusers_class("LCMScheduler")()
    gen = torch.Generator().manual_seed(0)
    sample, eps = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    outs = []
    for s in (ours, ref):
        s.set_timesteps(4)
        t = s.timesteps[1]
        s.set_begin_index(1)
        outs.append(s.step(eps, t, sample, generator=torch.Generator().manual_seed(7), return_dict=False))
    assert len(outs[0]) == len(outs[1]) == 2
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    ours.set_timesteps(4)
    out = ours.step(eps, ours.timesteps[0], sample, generator=torch.Generator().manual_seed(7))
    assert out.denoised is out.pred_original_sample


def test_add_noise_and_velocity_match_diffusers() -> None:
    ours, ref = LCMScheduler(), diffusers_class("LCMScheduler")()
    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(SHAPE, generator=gen), torch.randn(SHAPE, generator=gen)
    t = torch.tensor([10, 900])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))
    torch.testing.assert_close(ours.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t))


def test_config_interop(tmp_path: Path) -> None:
    assert_config_interop(LCMScheduler, {"prediction_type": "v_prediction", "original_inference_steps": 40}, tmp_path)


def test_errors() -> None:
    s = LCMScheduler()
    with pytest.raises(ValueError, match="sigmas="):
        s.set_timesteps(sigmas=[1.0, 0.5])
    with pytest.raises(ValueError, match="original_inference_steps"):
        s.set_timesteps(60)
    with pytest.raises(ValueError, match="descending"):
        s.set_timesteps(timesteps=[259, 499])
    with pytest.raises(ValueError, match="exactly one"):
        s.set_timesteps(4, timesteps=[999, 499])
    with pytest.raises(ValueError, match="original_inference_steps=2000"):
        s.set_timesteps(4, original_inference_steps=2000)
