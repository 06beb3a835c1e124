"""SDXL pipelines against Diffusers: txt2img, img2img, the base → refiner hand-off, inpainting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

PROMPT = "an astronaut on a horse"
PIXEL_TOL = 1 / 255
LATENT_TOL = 1e-4


def _both(
    sd: Any, tmp_path: Path, name: str, scheduler: str = "EulerDiscreteScheduler", **config: Any
) -> tuple[Any, Any]:
    unet = config.pop("unet", {})
    ref = sd.diffusers_pipeline(name, sd.diffusers_sdxl_components(tmp_path, scheduler, **unet), **config)
    ref.save_pretrained(tmp_path / name)
    ours = sd.load_difflux(tmp_path / name)
    assert type(ours).__name__ == name
    return ref, ours


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "DDIMScheduler"])
def test_sdxl_txt2img_parity(sd: Any, tmp_path: Path, scheduler: str) -> None:
    ref, ours = _both(sd, tmp_path, "StableDiffusionXLPipeline", scheduler)
    kw: dict[str, Any] = {"prompt": PROMPT, "num_inference_steps": 2, "guidance_scale": 5.0, "output_type": "np"}
    assert sd.max_diff(ref(**kw, generator=sd.gen(0)).images, ours(**kw, generator=sd.gen(0)).images) <= PIXEL_TOL


def test_sdxl_txt2img_options_parity(sd: Any, tmp_path: Path) -> None:
    ref, ours = _both(sd, tmp_path, "StableDiffusionXLPipeline")
    kw: dict[str, Any] = {
        "prompt": PROMPT,
        "prompt_2": "a red dog",
        "negative_prompt": "blue",
        "num_inference_steps": 2,
        "guidance_scale": 5.0,
        "guidance_rescale": 0.5,
        "original_size": (64, 64),
        "crops_coords_top_left": (4, 8),
        "target_size": (32, 32),
        "num_images_per_prompt": 2,
        "output_type": "latent",
    }
    a, b = ref(**kw, generator=sd.gen(3)).images, ours(**kw, generator=sd.gen(3)).images
    assert sd.max_diff(a, b) <= LATENT_TOL


def test_sdxl_turbo_style_parity(sd: Any, tmp_path: Path) -> None:
    ref, ours = _both(sd, tmp_path, "StableDiffusionXLPipeline")
    kw: dict[str, Any] = {"prompt": PROMPT, "num_inference_steps": 1, "guidance_scale": 0.0, "output_type": "np"}
    assert sd.max_diff(ref(**kw, generator=sd.gen(0)).images, ours(**kw, generator=sd.gen(0)).images) <= PIXEL_TOL


def test_sdxl_img2img_parity(sd: Any, tmp_path: Path) -> None:
    ref, ours = _both(sd, tmp_path, "StableDiffusionXLImg2ImgPipeline")
    kw: dict[str, Any] = {"prompt": PROMPT, "image": sd.image_input(), "strength": 0.6, "num_inference_steps": 4}
    a = ref(**kw, generator=sd.gen(1), output_type="np").images
    b = ours(**kw, generator=sd.gen(1), output_type="np").images
    assert sd.max_diff(a, b) <= PIXEL_TOL


def test_sdxl_refiner_hand_off_parity(sd: Any, tmp_path: Path) -> None:
    base_ref, base = _both(sd, tmp_path, "StableDiffusionXLPipeline")
    refiner_ref = sd.diffusers_pipeline("StableDiffusionXLImg2ImgPipeline", base_ref.components)
    from difflux_stable_diffusion import StableDiffusionXLImg2ImgPipeline

    refiner = StableDiffusionXLImg2ImgPipeline(**base.components)
    refiner.set_progress_bar_config(disable=True)
    kw: dict[str, Any] = {"prompt": PROMPT, "num_inference_steps": 4}
    ref_latents = base_ref(**kw, denoising_end=0.5, output_type="latent", generator=sd.gen(0)).images
    our_latents = base(**kw, denoising_end=0.5, output_type="latent", generator=sd.gen(0)).images
    assert sd.max_diff(ref_latents, our_latents) <= LATENT_TOL
    a = refiner_ref(**kw, image=ref_latents, denoising_start=0.5, output_type="np", generator=sd.gen(0)).images
    b = refiner(**kw, image=our_latents, denoising_start=0.5, output_type="np", generator=sd.gen(0)).images
    assert sd.max_diff(a, b) <= PIXEL_TOL


@pytest.mark.parametrize("in_channels", [9, 4])
def test_sdxl_inpaint_parity(sd: Any, tmp_path: Path, in_channels: int) -> None:
    ref, ours = _both(sd, tmp_path, "StableDiffusionXLInpaintPipeline", unet={"in_channels": in_channels})
    kw: dict[str, Any] = {
        "prompt": PROMPT,
        "image": sd.image_input(),
        "mask_image": sd.mask_input(),
        "num_inference_steps": 3,
        "strength": 0.8,
        "output_type": "np",
    }
    assert sd.max_diff(ref(**kw, generator=sd.gen(2)).images, ours(**kw, generator=sd.gen(2)).images) <= PIXEL_TOL
