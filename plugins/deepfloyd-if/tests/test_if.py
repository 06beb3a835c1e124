"""DeepFloyd IF against Diffusers 0.42.1 on the same folders, seeds and inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen, image_input, load_difflux, max_diff

from .conftest import SIZE, SR_SIZE

TOL = 1e-4


def _diffusers(folder: Path) -> Any:
    import diffusers

    # its SR img2img / inpainting classes do not list the checker and watermarker as optional: pass them
    pipe = diffusers.DiffusionPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, watermarker=None
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _low_res(seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.rand((batch, 3, SR_SIZE // 2, SR_SIZE // 2), generator=gen(seed)) * 2 - 1


def _inputs(name: str, extra: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {"prompt": "a red cat", "num_inference_steps": 2, "output_type": "pt", **extra}
    if "SuperResolution" in name:
        args.setdefault("image", _low_res())
    if "Img2Img" in name or "Inpainting" in name:
        key = "original_image" if "SuperResolution" in name else "image"
        args.setdefault(key, image_input(0, SR_SIZE if "SuperResolution" in name else SIZE))
    if "Inpainting" in name:
        from difflux_stable_diffusion.testing import mask_input

        args.setdefault("mask_image", mask_input(SR_SIZE if "SuperResolution" in name else SIZE))
    return args


CASES = [
    ("IFPipeline", {}),
    ("IFPipeline", {"negative_prompt": "a dog", "output_type": "np"}),
    ("IFPipeline", {"guidance_scale": 1.0}),
    ("IFPipeline", {"prompt": ["a red cat", "a blue dog"], "num_images_per_prompt": 2}),
    ("IFSuperResolutionPipeline", {}),
    ("IFSuperResolutionPipeline", {"guidance_scale": 1.0, "noise_level": 100, "output_type": "np"}),
    ("IFImg2ImgPipeline", {"strength": 0.5, "num_inference_steps": 4}),
    ("IFImg2ImgSuperResolutionPipeline", {"strength": 0.5, "num_inference_steps": 4}),
    ("IFInpaintingPipeline", {}),
    ("IFInpaintingPipeline", {"strength": 0.5, "num_inference_steps": 4, "output_type": "np"}),
    ("IFInpaintingSuperResolutionPipeline", {"noise_level": 50}),
]


@pytest.mark.parametrize(("name", "extra"), CASES)
def test_parity(if_folders: dict[str, Path], name: str, extra: dict[str, Any]) -> None:
    ours, theirs = load_difflux(if_folders[name]), _diffusers(if_folders[name])
    assert type(ours).__name__ == name
    args = _inputs(name, extra)
    total = len(args["prompt"]) * args.get("num_images_per_prompt", 1) if isinstance(args["prompt"], list) else 1
    gens = ([gen(i) for i in range(total)], [gen(i) for i in range(total)]) if total > 1 else (gen(0), gen(0))
    a = ours(**args, generator=gens[0]).images
    b = theirs(**args, generator=gens[1]).images
    assert a.shape == b.shape
    assert max_diff(a, b) <= (TOL if args["output_type"] == "pt" else 1 / 255)
