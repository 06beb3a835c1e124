"""Issue 10 items 3, 4, 7 and issue 11 item 3 over every unconditional pipeline.

One image per generator (a batch with ``[g5, g6]``: the second output equals a solo run with
``g6``), ``output_type="latent"`` (the sample before postprocessing), ``pipe.num_timesteps`` after a
run, a callback that stops the run, and bad inputs refused before any model runs.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import torch
from unconditional_helpers import assert_same, first_output, quiet, seeded

#: pipeline kind -> (test module, conformance class giving tiny components, call options)
KINDS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ddpm": ("test_pixel_samplers", "TestDDPMConformance", {"num_inference_steps": 3}),
    "ddim": ("test_pixel_samplers", "TestDDIMConformance", {"num_inference_steps": 3, "eta": 1.0}),
    "pndm": ("test_pixel_samplers", "TestPNDMConformance", {"num_inference_steps": 3}),
    "ldm": ("test_latent_and_class_pipelines", "TestLDMConformance", {"num_inference_steps": 3, "eta": 1.0}),
    "dit": ("test_latent_and_class_pipelines", "TestDiTConformance", {"num_inference_steps": 3}),
    "consistency": ("test_latent_and_class_pipelines", "TestConsistencyConformance", {"class_labels": 1}),
    "score-sde-ve": ("test_ve_audio_repaint", "TestScoreSdeVeConformance", {"num_inference_steps": 2}),
    "karras-ve": ("test_ve_audio_repaint", "TestKarrasVeConformance", {"num_inference_steps": 2}),
    "dance-diffusion": ("test_ve_audio_repaint", "TestDanceDiffusionConformance", {"num_inference_steps": 2}),
    "repaint": ("test_ve_audio_repaint", "TestRePaintConformance", {}),
}


def make(kind: str) -> tuple[Any, dict[str, Any]]:
    """A tiny pipeline of ``kind`` and its inputs (without generator / batch)."""
    module, name, options = KINDS[kind]
    kit = getattr(importlib.import_module(module), name)()
    pipe = quiet(kit.pipeline_class(**kit.make_components()))
    inputs = {k: v for k, v in kit.make_inputs(0).items() if k not in ("generator", "output_type")}
    return pipe, {**inputs, **options}


def batched(kind: str, inputs: dict[str, Any], size: int) -> dict[str, Any]:
    """The inputs for ``size`` outputs (a batch size, class labels, or a batch of images)."""
    if kind == "dit":
        return {**inputs, "class_labels": [1] * size}
    if kind == "repaint":
        image, mask = inputs["image"], inputs["mask_image"].reshape(1, 1, *inputs["mask_image"].shape[-2:])
        return {**inputs, "image": image.repeat(size, 1, 1, 1), "mask_image": mask.repeat(size, 1, 1, 1)}
    return {**inputs, "batch_size": size}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_output_comes_from_its_own_generator(kind: str) -> None:
    """Every draw (initial noise, scheduler and jump-back noise) of output i comes from generator i.

    Score-SDE's corrector sets its step size from the batch-mean gradient norm (Song et al. 2021,
    Algorithm 5), so its outputs depend on their batch-mates; there two generators seeded alike
    must give two copies of the solo run (a shared draw would give two different images).
    """
    pipe, inputs = make(kind)
    latent = "pt" if kind == "dance-diffusion" else "latent"
    seeds = (6, 6) if kind == "score-sde-ve" else (5, 6)
    pair = first_output(pipe(**batched(kind, inputs, 2), generator=[seeded(s) for s in seeds], output_type=latent))
    solo = first_output(pipe(**batched(kind, inputs, 1), generator=seeded(seeds[1]), output_type=latent))
    first = first_output(pipe(**batched(kind, inputs, 1), generator=seeded(seeds[0]), output_type=latent))
    tol = 1e-4 * max(1.0, float(solo.abs().max()))  # Karras-VE samples reach 1e6 on this random model
    assert_same(pair[1:], solo, tol, what="second output vs a solo run with its generator")
    assert_same(pair[:1], first, tol, what="first output vs a solo run with its generator")


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "dance-diffusion"])
def test_latent_output_is_the_sample_before_postprocessing(kind: str) -> None:
    pipe, inputs = make(kind)
    sample = first_output(pipe(**inputs, generator=seeded(0), output_type="latent"))
    images = first_output(pipe(**inputs, generator=seeded(0), output_type="pt"))
    assert isinstance(sample, torch.Tensor) and sample.ndim == 4
    if kind in ("ldm", "dit"):  # latent space: the decoder makes the images
        assert sample.shape[-1] < images.shape[-1] or sample.shape[1] != images.shape[1]
    elif kind == "score-sde-ve":  # the last predictor mean, on pixels in [0, 1]
        assert_same(sample.clamp(0, 1), images)
    else:
        assert_same((sample / 2 + 0.5).clamp(0, 1), images)


def test_dance_diffusion_latent_output_is_the_uncut_sample() -> None:
    pipe, inputs = make("dance-diffusion")
    sample = first_output(pipe(**inputs, generator=seeded(0), output_type="latent"))
    audio = first_output(pipe(**inputs, generator=seeded(0), output_type="pt"))
    assert_same(sample.clamp(-1, 1)[..., : audio.shape[-1]], audio)


@pytest.mark.parametrize("kind", list(KINDS))
def test_num_timesteps_and_interrupt(kind: str) -> None:
    """``pipe.num_timesteps`` is the run's length; a callback setting ``pipe._interrupt`` stops after its step."""
    pipe, inputs = make(kind)
    seen: list[int] = []

    def stop(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> None:
        seen.append(i)
        p._interrupt = True

    pipe(**inputs, generator=seeded(0))
    full = pipe.num_timesteps
    assert full == len(pipe.scheduler.timesteps) > 0
    pipe(**inputs, generator=seeded(0), callback_on_step_end=stop)
    assert seen == [0]


def _nan_latents(pipe: Any) -> torch.Tensor:
    latents = torch.randn(1, 3, 8, 8)
    latents[0, 0, 0, 0] = float("nan")
    return latents


#: (case, argument, value, what the message says)
CASES = [
    ("output_type unknown", "output_type", "jpg", "output_type='jpg' is not supported"),
    ("zero steps", "num_inference_steps", 0, "num_inference_steps must be at least 1"),
    ("NaN latents", "latents", "nan", "latents holds 1 NaN"),
    ("unknown callback tensor", "callback_on_step_end_tensor_inputs", ["noise"], "'noise'"),
]


def _params() -> list[Any]:
    import inspect

    params = []
    for kind in KINDS:
        module, name, _ = KINDS[kind]
        cls = getattr(importlib.import_module(module), name).pipeline_class
        call = inspect.signature(cls.__call__).parameters
        for case, argument, value, message in CASES:
            if argument in call:
                params.append(pytest.param(kind, argument, value, message, id=f"{kind}-{case}"))
    return params


@pytest.mark.parametrize(("kind", "argument", "value", "message"), _params())
def test_bad_inputs_are_refused_before_any_model_runs(kind: str, argument: str, value: Any, message: str) -> None:
    pipe, inputs = make(kind)
    calls: list[int] = []
    handles = [
        m.register_forward_pre_hook(lambda *a: calls.append(1))
        for m in pipe.components.values()
        if isinstance(m, torch.nn.Module)
    ]
    inputs[argument] = _nan_latents(pipe) if value == "nan" else value
    if argument == "callback_on_step_end_tensor_inputs":
        inputs["callback_on_step_end"] = lambda *a: None
    try:
        with pytest.raises((ValueError, TypeError), match=message):
            pipe(**inputs, generator=seeded(0))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []


@pytest.mark.parametrize(
    ("argument", "message"),
    [("image", "image holds 1 NaN"), ("mask_image", "mask_image holds 1 NaN"), ("size", "mask of the image's size")],
)
def test_repaint_checks_image_and_mask(argument: str, message: str) -> None:
    pipe, inputs = make("repaint")
    if argument == "size":
        inputs["mask_image"] = torch.ones(1, 1, 4, 4)
    else:
        bad = inputs[argument].clone()
        bad.view(-1)[0] = float("nan")
        inputs[argument] = bad
    with pytest.raises(ValueError, match=message):
        pipe(**inputs, generator=seeded(0))
