"""Stable Diffusion 1.x/2.x pipelines against Diffusers: same folder, same seed, same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

PROMPT = "a photo of a cat on the red horse"
PIXEL_TOL = 1 / 255
LATENT_TOL = 1e-4


def _both(sd: Any, tmp_path: Path, name: str, scheduler: str = "DDIMScheduler", **unet: Any) -> tuple[Any, Any]:
    ref = sd.diffusers_pipeline(
        name, sd.diffusers_sd_components(tmp_path, scheduler, **unet), requires_safety_checker=False
    )
    ref.save_pretrained(tmp_path / "saved")
    ours = sd.load_difflux(tmp_path / "saved")
    assert type(ours).__name__ == name
    return ref, ours


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "DPMSolverMultistepScheduler"])
def test_txt2img_parity(sd: Any, tmp_path: Path, scheduler: str) -> None:
    ref, ours = _both(sd, tmp_path, "StableDiffusionPipeline", scheduler)
    kw: dict[str, Any] = {"prompt": PROMPT, "num_inference_steps": 3, "guidance_scale": 6.0}
    for output_type, tol in (("latent", LATENT_TOL), ("np", PIXEL_TOL)):
        a = ref(**kw, generator=sd.gen(0), output_type=output_type).images
        b = ours(**kw, generator=sd.gen(0), output_type=output_type).images
        assert sd.max_diff(a, b) <= tol, (output_type, sd.max_diff(a, b))


def test_txt2img_parity_options(sd: Any, tmp_path: Path) -> None:
    ref, ours = _both(sd, tmp_path, "StableDiffusionPipeline")
    kw: dict[str, Any] = {
        "prompt": [PROMPT, "a dog"],
        "negative_prompt": ["blue", "red"],
        "num_images_per_prompt": 2,
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
        "guidance_rescale": 0.7,
        "eta": 0.5,
        "output_type": "np",
        "height": 32,
        "width": 48,
    }
    a = ref(**kw, generator=[sd.gen(i) for i in range(4)]).images
    b = ours(**kw, generator=[sd.gen(i) for i in range(4)]).images
    assert a.shape == (4, 32, 48, 3)
    assert sd.max_diff(a, b) <= PIXEL_TOL


def test_img2img_parity(sd: Any, tmp_path: Path) -> None:
    ref, ours = _both(sd, tmp_path, "StableDiffusionImg2ImgPipeline")
    kw: dict[str, Any] = {"prompt": PROMPT, "image": sd.image_input(), "strength": 0.75, "num_inference_steps": 4}
    a = ref(**kw, generator=sd.gen(1), output_type="np").images
    b = ours(**kw, generator=sd.gen(1), output_type="np").images
    assert sd.max_diff(a, b) <= PIXEL_TOL


@pytest.mark.parametrize("in_channels", [9, 4])
def test_inpaint_parity(sd: Any, tmp_path: Path, in_channels: int) -> None:
    ref, ours = _both(sd, tmp_path, "StableDiffusionInpaintPipeline", in_channels=in_channels)
    kw: dict[str, Any] = {
        "prompt": PROMPT,
        "image": sd.image_input(),
        "mask_image": sd.mask_input(),
        "num_inference_steps": 3,
        "strength": 1.0 if in_channels == 9 else 0.8,
    }
    a = ref(**kw, generator=sd.gen(2), output_type="np").images
    b = ours(**kw, generator=sd.gen(2), output_type="np").images
    assert sd.max_diff(a, b) <= PIXEL_TOL
