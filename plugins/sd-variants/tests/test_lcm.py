"""LatentConsistencyModelPipeline and its img2img sibling against Diffusers: same folder, same seed, same output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch


@pytest.fixture(scope="module")
def lcm_pairs(sv: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    """``{"txt2img" | "img2img": (Diffusers pipeline, difflux's loaded from the saved folder)}`` (LCM UNet)."""
    folder = tmp_path_factory.mktemp("lcm")
    components = sv.sd_components(folder, "LCMScheduler", time_cond_proj_dim=32)
    txt = sv.saved_pair(folder, "LatentConsistencyModelPipeline", components, requires_safety_checker=False)
    img = sv.saved_pair(folder, "LatentConsistencyModelImg2ImgPipeline", components, requires_safety_checker=False)
    return {"txt2img": txt, "img2img": img}


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"num_inference_steps": 2, "output_type": "np"}, id="default"),
        pytest.param({"num_inference_steps": 3, "original_inference_steps": 30, "guidance_scale": 4.0,
                      "output_type": "latent", "num_images_per_prompt": 2},
                     id="original-steps", marks=pytest.mark.slow),
        pytest.param({"timesteps": [999, 499], "num_inference_steps": None, "output_type": "np"},
                     id="custom-timesteps", marks=pytest.mark.slow),
    ],
)
def test_lcm_txt2img_parity(sv: Any, lcm_pairs: Any, options: dict[str, Any]) -> None:
    ref, ours = lcm_pairs["txt2img"]
    kw = {"prompt": sv.PROMPT, **options}
    a, b = ref(**kw, generator=sv.gen(0)).images, ours(**kw, generator=sv.gen(0)).images
    tol = sv.LATENT_TOL if options["output_type"] == "latent" else sv.PIXEL_TOL
    assert sv.max_diff(a, b) <= tol


@pytest.mark.parametrize("strength", [0.6, pytest.param(1.0, marks=pytest.mark.slow)])
def test_lcm_img2img_parity(sv: Any, lcm_pairs: Any, strength: float) -> None:
    ref, ours = lcm_pairs["img2img"]
    kw = {"prompt": sv.PROMPT, "image": sv.image_input(3), "num_inference_steps": 2, "strength": strength,
          "output_type": "np"}
    assert sv.max_diff(ref(**kw, generator=sv.gen(1)).images, ours(**kw, generator=sv.gen(1)).images) <= sv.PIXEL_TOL


def test_lcm_generator_list_and_denoised_callback(sv: Any, lcm_pairs: Any) -> None:
    """One image per generator, each reproducible alone; a callback sees the scheduler's clean estimate."""
    _, ours = lcm_pairs["txt2img"]
    seen: list[torch.Tensor] = []

    def cb(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(tensors["denoised"])
        return tensors

    kw: dict[str, Any] = {"prompt": [sv.PROMPT, "a dog"], "num_inference_steps": 2, "output_type": "latent"}
    both = ours(**kw, generator=[sv.gen(4), sv.gen(5)], callback_on_step_end=cb,
                callback_on_step_end_tensor_inputs=["latents", "denoised"]).images
    alone = ours(prompt="a dog", num_inference_steps=2, output_type="latent", generator=sv.gen(5)).images
    assert sv.max_diff(both[1:], alone) <= sv.LATENT_TOL  # batching rounding only (values ~40)
    assert len(seen) == 2 and seen[-1].shape == both.shape
    assert sv.max_diff(seen[-1], both) <= 1e-6  # the last step ends on the clean estimate


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"original_inference_steps": 0}, "original_inference_steps"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"callback_on_step_end": lambda p, i, t, k: k, "callback_on_step_end_tensor_inputs": ["noise"]}, "noise"),
    ],
)
def test_lcm_bad_input(sv: Any, lcm_pairs: Any, bad: dict[str, Any], match: str) -> None:
    _, ours = lcm_pairs["txt2img"]
    with pytest.raises((ValueError, TypeError), match=match):
        ours(prompt=sv.PROMPT, **{"num_inference_steps": 2, **bad})


def test_lcm_needs_lcm_scheduler_and_unet(sv: Any, lcm_pairs: Any, tmp_path: Path) -> None:
    from difflux_schedulers import DDIMScheduler
    from difflux_sd_variants import LatentConsistencyModelPipeline

    _, ours = lcm_pairs["txt2img"]
    pipe = LatentConsistencyModelPipeline(**{**ours.components, "scheduler": DDIMScheduler()},
                                          requires_safety_checker=False)
    with pytest.raises(ValueError, match="LCMScheduler"):
        pipe(prompt=sv.PROMPT, num_inference_steps=2)
    plain = sv.load_difflux  # a UNet without time_cond_proj_dim cannot take the guidance embedding
    folder = tmp_path / "plain"
    sv.diffusers_pipeline("LatentConsistencyModelPipeline", sv.sd_components(tmp_path, "LCMScheduler"),
                          requires_safety_checker=False).save_pretrained(folder)
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        plain(folder)(prompt=sv.PROMPT, num_inference_steps=2)
