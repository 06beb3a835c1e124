"""VQDiffusionScheduler: the schedule tables, the posterior and whole sampling loops against Diffusers
(the test-only oracle), and the scheduler contract (conformance kit, adapted to token samples)."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest
import torch
from difflux.testing import SchedulerConformance
from difflux_schedulers.vq_diffusion import VQDiffusionScheduler

CLASSES = 9  # 8 codes + the mask token
PIXELS = 12


def _log_probs(sample: torch.Tensor, t: Any, classes: int = CLASSES) -> torch.Tensor:
    """A deterministic stand-in for the model: log-softmax over the codes, depending on sample and step."""
    codes = torch.arange(classes - 1, dtype=torch.float32)[None, :, None]
    logits = torch.cos(codes * 0.7 + sample[:, None, :].float() * 0.3 + float(t) / 10.0) * 3.0
    return torch.log_softmax(logits, dim=1)


def _loop(scheduler: Any, steps: int, seed: int = 0) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    sample = torch.full((2, PIXELS), CLASSES - 1)
    sample[1, :4] = torch.arange(4)  # some known tokens
    for t in scheduler.timesteps:
        sample = scheduler.step(_log_probs(sample, t), t, sample, generator=gen).prev_sample
    return sample


@pytest.mark.parametrize(
    "config",
    [{}, {"num_train_timesteps": 20, "alpha_cum_start": 0.9, "gamma_cum_end": 0.9}],
    ids=["default", "short-custom"],
)
def test_schedule_tables_match_diffusers(config: dict[str, Any]) -> None:
    ours = VQDiffusionScheduler(CLASSES, **config)
    ref = diffusers.VQDiffusionScheduler(CLASSES, **config)
    for name in ("log_at", "log_bt", "log_ct", "log_cumprod_at", "log_cumprod_bt", "log_cumprod_ct"):
        assert torch.equal(getattr(ours, name), getattr(ref, name)), name
    assert torch.equal(ours.timesteps, ref.timesteps)


def test_posterior_matches_diffusers() -> None:
    ours, ref = VQDiffusionScheduler(CLASSES), diffusers.VQDiffusionScheduler(CLASSES)
    gen = torch.Generator().manual_seed(3)
    x_t = torch.randint(0, CLASSES, (3, PIXELS), generator=gen)
    log_p = torch.log_softmax(torch.randn(3, CLASSES - 1, PIXELS, generator=gen), dim=1)
    for t in (1, 17, 99):
        assert torch.allclose(ours.q_posterior(log_p, x_t, t), ref.q_posterior(log_p, x_t, t), atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [1, 5, 100])
def test_sampling_loop_matches_diffusers(steps: int) -> None:
    assert torch.equal(
        _loop(VQDiffusionScheduler(CLASSES), steps), _loop(diffusers.VQDiffusionScheduler(CLASSES), steps)
    )


def test_bad_inputs() -> None:
    scheduler = VQDiffusionScheduler(CLASSES)
    scheduler.set_timesteps(4)
    sample = torch.full((1, PIXELS), CLASSES - 1)
    with pytest.raises(ValueError, match=r"\(batch, 8, 12\)"):
        scheduler.step(torch.zeros(1, CLASSES, PIXELS), 3, sample)
    with pytest.raises(ValueError, match="at least 2"):
        VQDiffusionScheduler(1)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(101)


class TestVQDiffusionConformance(SchedulerConformance):
    """The contract on token samples: ``(batch, pixels)`` int64 in, log-probabilities of the codes as model output."""

    scheduler_class = VQDiffusionScheduler
    configs = [{"num_vec_classes": CLASSES}, {"num_vec_classes": CLASSES, "num_train_timesteps": 20}]
    sample_shape = (2, PIXELS)
    supports_add_noise = False
    rejects_unknown_timestep = False

    def model_output(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        return _log_probs(sample, timestep)

    def initial_sample(self, scheduler: Any, seed: int = 0) -> torch.Tensor:
        return torch.randint(0, CLASSES, self.sample_shape, generator=torch.Generator().manual_seed(seed))


def test_add_noise_follows_the_forward_process() -> None:
    """At step 0 almost every token survives; at the last step almost every token is masked."""
    scheduler = VQDiffusionScheduler(CLASSES)
    x0 = torch.randint(0, CLASSES - 1, (4, 500), generator=torch.Generator().manual_seed(0))
    noise = torch.rand(4, CLASSES, 500, generator=torch.Generator().manual_seed(1))
    early = scheduler.add_noise(x0, noise, torch.tensor([0]))
    late = scheduler.add_noise(x0, noise, torch.tensor([99, 99, 99, 99]))
    assert (early == x0).float().mean() > 0.99
    assert (late == CLASSES - 1).float().mean() > 0.99
    masked = torch.full_like(x0, CLASSES - 1)
    assert torch.equal(scheduler.add_noise(masked, noise, torch.tensor([50])), masked)
