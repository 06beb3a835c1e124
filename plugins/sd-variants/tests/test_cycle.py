"""CycleDiffusionPipeline against Diffusers: same folder, same seed, same images."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def cycle(sv: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    folder = tmp_path_factory.mktemp("cycle")
    components = sv.sd_components(folder)
    del components["image_encoder"]
    # as Diffusers' own tests: with set_alpha_to_one the last step has no variance to recover the noise from
    components["scheduler"] = sv.scheduler("DDIMScheduler", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return sv.saved_pair(folder, "CycleDiffusionPipeline", components, requires_safety_checker=False)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="default"),
        pytest.param({"guidance_scale": 1.0, "eta": 0.5, "strength": 1.0, "num_images_per_prompt": 2,
                      "output_type": "latent"}, id="unguided-two-images", marks=pytest.mark.slow),
        pytest.param({"source_guidance_scale": 2.0, "strength": 0.5, "num_inference_steps": 6},
                     id="source-guidance", marks=pytest.mark.slow),
    ],
)
def test_cycle_parity(sv: Any, cycle: Any, options: dict[str, Any]) -> None:
    ref, ours = cycle
    kw = {"prompt": "a photo of a dog", "source_prompt": "a photo of a cat", "image": sv.image_input(5),
          "num_inference_steps": 4, "output_type": "np", **options}
    a, b = ref(**kw, generator=sv.gen(0)).images, ours(**kw, generator=sv.gen(0)).images
    assert sv.max_diff(a, b) <= (sv.LATENT_TOL if kw["output_type"] == "latent" else sv.PIXEL_TOL)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"source_prompt": None}, "source_prompt"),
        ({"source_prompt": ["a", "b"]}, "source prompts"),
        ({"eta": 0.0}, "eta"),
        ({"strength": 1.5}, "strength"),
        ({"image": None}, "image"),
    ],
)
def test_cycle_bad_input(sv: Any, cycle: Any, bad: dict[str, Any], match: str) -> None:
    _, ours = cycle
    kw = {"prompt": "a dog", "source_prompt": "a cat", "image": sv.image_input(5), "num_inference_steps": 2, **bad}
    with pytest.raises((ValueError, TypeError), match=match):
        ours(**kw)
