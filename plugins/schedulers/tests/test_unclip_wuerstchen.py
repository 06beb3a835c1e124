"""UnCLIPScheduler and DDPMWuerstchenScheduler: conformance, and bit-level parity of the unCLIP /
Würstchen pipeline loops with Diffusers (the test-only oracle)."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.unclip import UnCLIPScheduler
from difflux_schedulers.wuerstchen import DDPMWuerstchenScheduler
from scheduler_parity import SHAPE, stand_in_model


class TestUnCLIPConformance(SchedulerConformance):
    scheduler_class = UnCLIPScheduler
    configs = [{}, {"prediction_type": "sample", "clip_sample": False}]  # learned_range: see the parity tests


def _unclip_loop(scheduler: Any, n: int, learned: bool, pass_prev: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop of Diffusers' unCLIP pipelines: ``prev_timestep`` passed explicitly (None at the end)."""
    scheduler.set_timesteps(n)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=gen)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        prev = timesteps[i + 1] if i + 1 < len(timesteps) else None
        out = stand_in_model(sample, t)
        if learned:  # a predicted variance in [-1, 1] as a second half of the channels
            out = torch.cat([out, torch.tanh(out)], dim=1)
        kwargs = {"prev_timestep": prev} if pass_prev else {}
        sample = scheduler.step(out, t, sample, generator=gen, **kwargs).prev_sample
    return timesteps, sample


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"variance_type": "learned_range", "prediction_type": "sample", "clip_sample_range": 2.0},
        {"clip_sample": False, "num_train_timesteps": 500},
    ],
    ids=["prior_default", "learned_range_sample", "no_clip_500"],
)
@pytest.mark.parametrize("steps", [2, 7, 25])
def test_unclip_parity(config: dict[str, Any], steps: int) -> None:
    learned = config.get("variance_type") == "learned_range"
    t_ours, x_ours = _unclip_loop(UnCLIPScheduler(**config), steps, learned, pass_prev=True)
    t_ref, x_ref = _unclip_loop(diffusers.UnCLIPScheduler(**config), steps, learned, pass_prev=True)
    assert torch.equal(t_ours, t_ref)
    assert torch.equal(x_ours, x_ref)


def test_unclip_step_without_prev_timestep_follows_the_schedule() -> None:
    """Without ``prev_timestep`` the step goes to the schedule's next timestep (Diffusers: ``t - 1``)."""
    _, explicit = _unclip_loop(UnCLIPScheduler(), 5, False, pass_prev=True)
    _, implicit = _unclip_loop(UnCLIPScheduler(), 5, False, pass_prev=False)
    assert torch.equal(explicit, implicit)
    fresh = UnCLIPScheduler()  # before set_timesteps: one training step, as in Diffusers
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    ours = fresh.step(stand_in_model(x, 10), 10, x, generator=torch.Generator().manual_seed(2)).prev_sample
    ref = diffusers.UnCLIPScheduler().step(stand_in_model(x, 10), 10, x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(ours, ref.prev_sample)
    with pytest.raises(ValueError, match="squaredcos_cap_v2"):
        UnCLIPScheduler(beta_schedule="linear")


def _wuerstchen_loop(scheduler: Any, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loop of Diffusers' Würstchen pipelines: over ``timesteps[:-1]``, ``t`` expanded to the batch."""
    scheduler.set_timesteps(n)
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=gen)
    for t in scheduler.timesteps[:-1]:
        ratio = t.expand(SHAPE[0])
        sample = scheduler.step(stand_in_model(sample, t), ratio, sample, generator=gen).prev_sample
    noised = scheduler.add_noise(sample, 0.3 * sample, torch.tensor([0.2, 0.9]))
    return scheduler.timesteps, sample, noised


@pytest.mark.parametrize("config", [{}, {"scaler": 2.0}, {"scaler": 0.5, "s": 0.01}], ids=["default", "s2", "s05"])
@pytest.mark.parametrize("steps", [1, 4, 12])
def test_wuerstchen_parity(config: dict[str, Any], steps: int) -> None:
    ours = _wuerstchen_loop(DDPMWuerstchenScheduler(**config), steps)
    ref = _wuerstchen_loop(diffusers.DDPMWuerstchenScheduler(**config), steps)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


def test_wuerstchen_custom_timesteps_and_errors() -> None:
    custom = [1.0, 0.6667, 0.5, 0.0]
    ours, ref = DDPMWuerstchenScheduler(), diffusers.DDPMWuerstchenScheduler()
    ours.set_timesteps(timesteps=custom)
    ref.set_timesteps(timesteps=custom)
    assert torch.equal(ours.timesteps, ref.timesteps)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    a = ours.step(stand_in_model(x, 0.5), torch.tensor(0.5), x, generator=torch.Generator().manual_seed(2))
    b = ref.step(stand_in_model(x, 0.5), torch.full((SHAPE[0],), 0.5), x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.prev_sample, b.prev_sample)  # a scalar timestep is broadcast over the batch
    with pytest.raises(ValueError, match="end of the schedule"):
        ours.step(x, torch.tensor(0.0), x)
    with pytest.raises(ValueError, match="descending"):
        ours.set_timesteps(timesteps=[0.0, 1.0])
    with pytest.raises(ValueError, match="num_inference_steps"):
        ours.set_timesteps(0)
