"""Kandinsky 2.1 against Diffusers 0.42.1: decoders, prior and combined pipelines on the same folders and seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen, image_input, load_difflux, mask_input, max_diff

SIZE = 32  # pixels, as the fixtures in conftest.py
TOL = 1e-4


def _diffusers(folder: Path) -> Any:
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _embeds(seed: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 32, generator=gen(seed))


@pytest.mark.parametrize(
    ("name", "extra", "tol"),
    [
        ("KandinskyPipeline", {"num_images_per_prompt": 2}, TOL),
        ("KandinskyPipeline", {"guidance_scale": 1.0}, TOL),
        ("KandinskyImg2ImgPipeline", {"image": "pil", "strength": 0.5, "num_inference_steps": 4}, TOL),
        ("KandinskyInpaintPipeline", {"image": "pil", "mask_image": "mask"}, 1 / 255),
    ],
)
def test_decoder_parity(k21_folders: dict[str, Path], name: str, extra: dict[str, Any], tol: float) -> None:
    ours, theirs = load_difflux(k21_folders[name]), _diffusers(k21_folders[name])
    assert type(ours).__name__ == name
    assert type(ours.text_encoder).__name__ == "MultilingualCLIP"
    extra = dict(extra)
    if extra.get("image") == "pil":
        extra["image"] = [image_input(0)] * 2
    if extra.get("mask_image") == "mask":
        extra["mask_image"] = [mask_input(SIZE)] * 2
    per = extra.get("num_images_per_prompt", 1)
    args: dict[str, Any] = {
        "prompt": ["a red cat", "a blue house"],
        "image_embeds": _embeds(0, 2),
        "negative_image_embeds": _embeds(1, 2),
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": 2,
        "output_type": "np",
        **extra,
    }
    a, b = ours(**args, generator=gen(0)).images, theirs(**args, generator=gen(0)).images
    assert a.shape == b.shape == (2 * per, SIZE, SIZE, 3)
    assert max_diff(a, b) <= tol


def test_prior_parity(k21_folders: dict[str, Path]) -> None:
    folder = k21_folders["KandinskyPriorPipeline"]
    ours, theirs = load_difflux(folder), _diffusers(folder)
    args = {"prompt": "a cat", "negative_prompt": "a dog", "num_inference_steps": 2}
    a, b = ours(**args, generator=gen(0)), theirs(**args, generator=gen(0))
    assert max_diff(a.image_embeds, b.image_embeds) <= TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) <= TOL


@pytest.mark.parametrize(
    "name", ["KandinskyCombinedPipeline", "KandinskyImg2ImgCombinedPipeline", "KandinskyInpaintCombinedPipeline"]
)
def test_combined_parity(k21_folders: dict[str, Path], name: str) -> None:
    ours, theirs = load_difflux(k21_folders[name]), _diffusers(k21_folders[name])
    args: dict[str, Any] = {
        "prompt": "a red cat",
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": 2,
        "prior_num_inference_steps": 2,
        "output_type": "np",
    }
    if "Img2Img" in name:
        args.update(image=image_input(1), strength=0.5, num_inference_steps=4)
    if "Inpaint" in name:
        args.update(image=image_input(1), mask_image=mask_input(SIZE))
    a, b = ours(**args, generator=gen(0)).images, theirs(**args, generator=gen(0)).images
    assert max_diff(a, b) <= (1 / 255 if "Inpaint" in name else TOL)
    assert ours.decoder_pipe.text_encoder is ours.text_encoder


def test_text_encoder_round_trip_into_transformers(k21_folders: dict[str, Path], tmp_path: Path) -> None:
    """The M-CLIP encoder saves the published layout: Diffusers' own class reloads it with equal outputs."""
    from diffusers.pipelines.kandinsky.text_encoder import MultilingualCLIP as Reference

    ours = load_difflux(k21_folders["KandinskyPipeline"]).text_encoder
    ours.save_pretrained(tmp_path / "te")
    theirs = Reference.from_pretrained(tmp_path / "te").eval()
    ids = torch.tensor([[0, 4, 5, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    for a, b in zip(ours(ids, mask), theirs(ids, mask)):
        assert max_diff(a, b) <= 1e-6


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"prompt": 7}, TypeError, "prompt must be a string"),
        ({"prompt": ["a", "b", "c"]}, ValueError, "2 image_embeds for 3 prompts"),
        ({"negative_prompt": ["a", "b", "c"]}, ValueError, "3 negative prompts for 2"),
        ({"image_embeds": torch.zeros(2, 5)}, ValueError, "the UNet reads 32"),
        ({"height": -8}, ValueError, "height"),
    ],
)
def test_bad_input_is_refused_before_any_model_runs(
    k21_folders: dict[str, Path], bad: dict[str, Any], error: type[Exception], match: str
) -> None:
    pipe = load_difflux(k21_folders["KandinskyPipeline"])
    calls: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in (pipe.unet, pipe.text_encoder)]
    args = {"prompt": ["a", "b"], "image_embeds": _embeds(0, 2), "negative_image_embeds": _embeds(1, 2), **bad}
    try:
        with pytest.raises(error, match=match):
            pipe(**args)
    finally:
        for h in hooks:
            h.remove()
    assert calls == []
