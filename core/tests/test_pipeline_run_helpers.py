"""difflux.pipeline_utils: the whole-step schedule cut, the input checks, the run state and the legacy callback.

The cut is checked on a stand-in scheduler laid out as Heun lays a schedule out (every timestep
but the first twice) and as a first-order scheduler does; the plugins' tests run it on every
real scheduler and pipeline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from difflux.pipeline_utils import (
    DenoisingState,
    call_legacy,
    check_embeds_width,
    check_finite,
    check_image_size,
    check_size,
    check_steps,
    cut_schedule,
    legacy_callback,
)

CUSTOM = [999, 850, 736, 645, 545, 455, 343, 233, 124, 24]


class StandIn:
    """The scheduler contract ``cut_schedule`` relies on: ``timesteps``, ``order``, ``config``, ``set_begin_index``."""

    def __init__(self, steps: list[int], order: int) -> None:
        # Heun's layout for order 2: t0, t1, t1, t2, t2, ...
        layout = [steps[0]] + [t for t in steps[1:] for _ in range(2)] if order == 2 else list(steps)
        self.timesteps = torch.tensor(layout, dtype=torch.float32)
        self.order = order
        self.config = {"num_train_timesteps": 1000}
        self.begin_index: int | None = None

    def set_begin_index(self, begin_index: int = 0) -> None:
        self.begin_index = begin_index


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("strength", [0.1, 0.2, 0.5, 0.75, 0.9, 1.0])
def test_strength_takes_whole_steps(order: int, strength: float) -> None:
    sched = StandIn(CUSTOM, order)
    cut = cut_schedule(sched, strength=strength)
    run = int(10 * strength)
    assert cut.num_steps == run and cut.total_steps == 10
    assert cut.begin_index == sched.begin_index == (10 - run) * order
    assert float(cut.timesteps[0]) == CUSTOM[10 - run]
    # a run of n steps takes n * order positions, less the missing corrector of the last step
    assert len(cut.timesteps) == run * order - (order - 1)


def test_the_public_report_heun_schedule() -> None:
    """strength=0.5 is not empty (Diffusers: 0 positions); strength=0.9 keeps 9 steps (Diffusers: 8)."""
    half = cut_schedule(StandIn(CUSTOM, 2), strength=0.5)
    assert half.num_steps == 5 and half.timesteps.tolist()[:3] == [455, 343, 343]
    most = cut_schedule(StandIn(CUSTOM, 2), strength=0.9)
    assert most.num_steps == 9 and len(most.timesteps) == 17


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_base_and_refiner_are_complementary(order: int, fraction: float) -> None:
    sched = StandIn(CUSTOM, order)
    base = cut_schedule(sched, denoising_end=fraction)
    refiner = cut_schedule(sched, denoising_start=fraction)
    assert base.begin_index == 0 and base.end_index == refiner.begin_index
    assert refiner.begin_index % order == 0 and refiner.end_index == len(sched.timesteps)
    assert base.num_steps + refiner.num_steps == 10
    cutoff = round(1000 - fraction * 1000)
    assert all(t >= cutoff for t in base.timesteps[::order].tolist())
    assert all(t < cutoff for t in refiner.timesteps[::order].tolist())


def test_cuts_that_leave_nothing_say_what_to_change() -> None:
    with pytest.raises(ValueError, match=r"strength=0.05 .* raise strength to at least 0.1"):
        cut_schedule(StandIn(CUSTOM, 2), strength=0.05)
    with pytest.raises(ValueError, match=r"denoising_start=0.99 leaves no denoising steps.*lower denoising_start"):
        cut_schedule(StandIn(CUSTOM, 1), denoising_start=0.99)
    with pytest.raises(ValueError, match=r"denoising_end=0.0001 leaves no denoising steps.*raise denoising_end"):
        cut_schedule(StandIn(CUSTOM, 1), denoising_end=0.0001)
    with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
        cut_schedule(StandIn(CUSTOM, 1), strength=1.5)


@pytest.mark.parametrize(
    ("height", "width", "message"),
    [
        (0, 64, "height=0 must be positive"),
        (-8, 64, "height=-8 must be positive"),
        (64, 36, r"width=36 is not a multiple of 8 \(the VAE's downscaling\); use 32 or 40"),
        (64.0, 64, "height must be an int"),
        (True, 64, "height must be an int"),
    ],
)
def test_check_size(height: Any, width: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_size(height, width, 8, "P")


def test_check_size_accepts_good_and_missing_sizes() -> None:
    check_size(64, None, 8, "P")
    check_size(np.int64(32), 16, 8, "P")


@pytest.mark.parametrize(
    "value", [torch.tensor([1.0, float("nan")]), np.array([float("inf"), 1.0]), [torch.ones(2), torch.tensor([np.nan])]]
)
def test_check_finite_refuses_nan_and_inf(value: Any) -> None:
    with pytest.raises(ValueError, match="x holds 1 NaN or infinite values"):
        check_finite(value, "x", "P")


def test_check_finite_passes_finite_and_non_float_inputs() -> None:
    for value in (torch.ones(3), np.zeros(2), torch.tensor([1, 2]), PIL.Image.new("RGB", (4, 4)), None):
        check_finite(value, "x", "P")


def test_check_embeds_width() -> None:
    with pytest.raises(ValueError, match="have 35 features per token, but the UNet's width is 32"):
        check_embeds_width(torch.zeros(1, 77, 35), 32, "prompt_embeds", "P", "the UNet's width")
    with pytest.raises(ValueError, match=r"shaped \(batch, tokens, features\), got \(77, 32\)"):
        check_embeds_width(torch.zeros(77, 32), 32, "prompt_embeds", "P", "w")
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        check_embeds_width([[0.0]], 32, "prompt_embeds", "P", "w")  # type: ignore[arg-type]
    check_embeds_width(torch.zeros(2, 77, 32), 32, "prompt_embeds", "P", "w")


@pytest.mark.parametrize(
    "image",
    [PIL.Image.new("RGB", (1, 1)), np.zeros((4, 1, 3)), torch.zeros(1, 3, 7, 8), [torch.zeros(3, 8, 2)]],
)
def test_check_image_size_refuses_images_under_one_latent_pixel(image: Any) -> None:
    with pytest.raises(ValueError, match="smaller than one latent pixel"):
        check_image_size(image, 8, "image", "P")


def test_check_steps() -> None:
    for bad in (0, -1, 2.5, None, True):
        with pytest.raises(ValueError, match="num_inference_steps"):
            check_steps(bad, "P")
    check_steps(None, "P", custom=True)
    check_steps(3, "P")


def test_run_state_defaults() -> None:
    state = DenoisingState()
    assert (state.num_timesteps, state.guidance_scale, state.do_classifier_free_guidance) == (0, 1.0, False)
    assert (state.interrupt, state.cross_attention_kwargs, state.clip_skip, state.guidance_rescale) == (
        False,
        None,
        None,
        0.0,
    )
    state._guidance_scale = 7.5
    assert state.do_classifier_free_guidance


def test_legacy_callback_warns_and_calls_every_nth_whole_step() -> None:
    calls: list[int] = []
    with pytest.warns(FutureWarning, match="deprecated"):
        callback = legacy_callback(lambda step, t, latents: calls.append(step), 2, "P")
    latents = torch.zeros(1)
    for position in range(7):  # a second-order run: 4 steps in 7 positions
        call_legacy(callback, position, 7, 2, 0, latents)
    assert calls == [0, 2]
    assert legacy_callback(None, None, "P") is None
    with pytest.raises(ValueError, match="callback_steps must be a positive int"):
        legacy_callback(lambda *a: None, 0, "P")
