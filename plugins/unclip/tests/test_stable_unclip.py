"""Stable unCLIP against Diffusers 0.42.1 on the same saved folders, seeds and inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen, image_input, load_difflux, max_diff

TOL = 1e-4


def _diffusers(folder: Path) -> Any:
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("StableUnCLIPPipeline", {"noise_level": 0}),
        ("StableUnCLIPPipeline", {"noise_level": 300, "num_images_per_prompt": 2, "negative_prompt": "a dog"}),
        ("StableUnCLIPPipeline", {"guidance_scale": 1.0, "prior_guidance_scale": 1.0}),
        ("StableUnCLIPImg2ImgPipeline", {"image": "pil", "noise_level": 100}),
        ("StableUnCLIPImg2ImgPipeline", {"image_embeds": "embeds", "prompt": "a cat"}),
    ],
)
def test_parity(stable_unclip_folders: dict[str, Path], name: str, extra: dict[str, Any]) -> None:
    folder = stable_unclip_folders[name]
    ours, theirs = load_difflux(folder), _diffusers(folder)
    assert type(ours).__name__ == name
    assert type(ours.image_normalizer).__name__ == "StableUnCLIPImageNormalizer"
    extra = dict(extra)
    if extra.get("image") == "pil":
        extra["image"] = image_input(0)
    if extra.get("image_embeds") == "embeds":
        extra["image_embeds"] = torch.randn(1, 32, generator=gen(5))
    if name == "StableUnCLIPPipeline":
        extra.setdefault("prompt", "a red cat")
        extra["prior_num_inference_steps"] = 2
    args = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np", **extra}
    a, b = ours(**args, generator=gen(0)).images, theirs(**args, generator=gen(0)).images
    assert a.shape == b.shape
    assert max_diff(a, b) <= TOL


@pytest.mark.parametrize(
    ("name", "bad", "match"),
    [
        ("StableUnCLIPPipeline", {"prompt": None}, "pass prompt"),
        ("StableUnCLIPPipeline", {"noise_level": 1000}, r"noise_level must be an int in \[0, 999\]"),
        ("StableUnCLIPPipeline", {"prior_latents": torch.zeros(2, 32)}, "prior_latents must be shaped"),
        ("StableUnCLIPImg2ImgPipeline", {}, "pass image or image_embeds"),
        ("StableUnCLIPImg2ImgPipeline", {"image": "x"}, "image must be PIL"),
        ("StableUnCLIPImg2ImgPipeline", {"image_embeds": torch.zeros(1, 2, 32)}, "image_embeds must be"),
    ],
)
def test_bad_input_is_refused(
    stable_unclip_folders: dict[str, Path], name: str, bad: dict[str, Any], match: str
) -> None:
    pipe = load_difflux(stable_unclip_folders[name])
    calls: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    args = {"prompt": "a cat", **bad} if name == "StableUnCLIPPipeline" else bad
    try:
        with pytest.raises((TypeError, ValueError), match=match):
            pipe(**args, num_inference_steps=2)
    finally:
        hook.remove()
    assert calls == []
