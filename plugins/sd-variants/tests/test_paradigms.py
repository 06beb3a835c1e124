"""StableDiffusionParadigmsPipeline (parallel sampling) against Diffusers: same folder, same seed, same images."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def paradigms(sv: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    folder = tmp_path_factory.mktemp("paradigms")
    out = {}
    for sched in ("DDPMParallelScheduler", "DDIMParallelScheduler"):
        components = sv.sd_components(folder, sched)
        del components["image_encoder"]
        out[sched] = sv.saved_pair(folder / sched, "StableDiffusionParadigmsPipeline", components,
                                   requires_safety_checker=False)
    return out


@pytest.mark.parametrize(
    ("sched", "options"),
    [
        pytest.param("DDPMParallelScheduler", {"parallel": 3, "num_inference_steps": 6}, id="ddpm"),
        pytest.param("DDIMParallelScheduler", {"parallel": 4, "num_inference_steps": 5, "tolerance": 0.5,
                                                "negative_prompt": "blue"},
                     id="ddim-negative", marks=pytest.mark.slow),
        pytest.param("DDPMParallelScheduler", {"parallel": 2, "num_inference_steps": 3, "guidance_scale": 1.0,
                                                "num_images_per_prompt": 2},
                     id="unguided-two-images", marks=pytest.mark.slow),
    ],
)
def test_paradigms_parity(sv: Any, paradigms: Any, sched: str, options: dict[str, Any]) -> None:
    ref, ours = paradigms[sched]
    kw = {"prompt": sv.PROMPT, "output_type": "np", **options}
    assert sv.max_diff(ref(**kw, generator=sv.gen(0)).images, ours(**kw, generator=sv.gen(0)).images) <= sv.PIXEL_TOL


def test_paradigms_zero_tolerance_is_sequential_sampling(sv: Any, paradigms: Any) -> None:
    """With tolerance 0 every window advances one step after converging: the result is the ordinary DDIM
    loop (the fixed point of the Picard iteration), here the SD pipeline on the same components."""
    from difflux_schedulers import DDIMParallelScheduler, DDIMScheduler
    from difflux_sd_variants import StableDiffusionParadigmsPipeline
    from difflux_stable_diffusion import StableDiffusionPipeline

    _, ours = paradigms["DDIMParallelScheduler"]
    config = {**dict(ours.scheduler.config), "steps_offset": 1, "clip_sample": False}
    components = {**ours.components, "scheduler": DDIMParallelScheduler.from_config(config)}
    parallel = StableDiffusionParadigmsPipeline(**components, requires_safety_checker=False)
    sd = StableDiffusionPipeline(**{**ours.components, "scheduler": DDIMScheduler.from_config(config)},
                                 image_encoder=None, requires_safety_checker=False)
    for pipe in (parallel, sd):
        pipe.set_progress_bar_config(disable=True)
    kw: dict[str, Any] = {"prompt": sv.PROMPT, "num_inference_steps": 4, "output_type": "latent"}
    a = parallel(**kw, parallel=4, tolerance=0.0, generator=sv.gen(3)).images
    b = sd(**kw, generator=sv.gen(3)).images
    assert sv.max_diff(a, b) <= 1e-3


@pytest.mark.parametrize(
    ("sched", "bad", "match"),
    [
        ("DDPMParallelScheduler", {"parallel": 0}, "parallel"),
        ("DDPMParallelScheduler", {"tolerance": -1.0}, "tolerance"),
        ("DDIMParallelScheduler", {"eta": 0.5}, "eta"),
    ],
)
def test_paradigms_bad_input(sv: Any, paradigms: Any, sched: str, bad: dict[str, Any], match: str) -> None:
    _, ours = paradigms[sched]
    with pytest.raises(ValueError, match=match):
        ours(prompt=sv.PROMPT, num_inference_steps=2, **bad)


def test_paradigms_needs_a_parallel_scheduler(sv: Any, paradigms: Any) -> None:
    from difflux_schedulers import DDIMScheduler
    from difflux_sd_variants import StableDiffusionParadigmsPipeline

    _, ours = paradigms["DDIMParallelScheduler"]
    pipe = StableDiffusionParadigmsPipeline(**{**ours.components, "scheduler": DDIMScheduler()},
                                            requires_safety_checker=False)
    with pytest.raises(TypeError, match="DDPMParallelScheduler or DDIMParallelScheduler"):
        pipe(prompt=sv.PROMPT, num_inference_steps=2)
