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


def test_safety_checker_and_watermarker_load_and_match(if_checked_folder: tuple[Path, Any]) -> None:
    """The optional components load from Diffusers' layout; the watermark is pasted as Diffusers pastes it."""
    import json

    folder = if_checked_folder[0]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["safety_checker"] == ["deepfloyd_if", "IFSafetyChecker"]
    assert index["watermarker"] == ["deepfloyd_if", "IFWatermarker"]
    ours, theirs = load_difflux(if_checked_folder[0]), _diffusers_full(*if_checked_folder)
    assert type(ours.safety_checker).__name__ == "IFSafetyChecker"
    assert type(ours.watermarker).__name__ == "IFWatermarker"
    args: dict[str, Any] = {"prompt": "a red cat", "num_inference_steps": 2, "output_type": "pil"}
    a, b = ours(**args, generator=gen(0)), theirs(**args, generator=gen(0))
    assert a.nsfw_detected == b.nsfw_detected == [False]
    assert a.watermark_detected == b.watermark_detected == [False]
    plain = ours(**{**args, "output_type": "np"}, generator=gen(0)).images
    assert max_diff(a.images[0], plain[0] * 255) > 8  # the mark changed pixels
    assert max_diff(a.images[0], b.images[0]) <= 1


@pytest.mark.parametrize("head", ["p_head", "w_head"])
def test_flagged_images_are_black(if_checked_folder: tuple[Path, Any], head: str) -> None:
    ours, theirs = load_difflux(if_checked_folder[0]), _diffusers_full(*if_checked_folder)
    for pipe in (ours, theirs):
        with torch.no_grad():
            getattr(pipe.safety_checker, head).bias.fill_(10.0)
    args: dict[str, Any] = {"prompt": "a red cat", "num_inference_steps": 2, "output_type": "np"}
    a, b = ours(**args, generator=gen(0)), theirs(**args, generator=gen(0))
    assert (a.nsfw_detected, a.watermark_detected) == (b.nsfw_detected, b.watermark_detected)
    assert [head == "p_head"] == a.nsfw_detected
    assert float(abs(a.images).max()) == 0.0 and a.images.shape == b.images.shape


def _diffusers_full(folder: Path, checker: Any) -> Any:
    import copy

    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, safety_checker=copy.deepcopy(checker))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_clean_caption_without_packages_warns_and_lowercases(
    if_folders: dict[str, Path], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import difflux_pixart.captions as captions

    monkeypatch.setattr(captions, "caption_cleaning_available", lambda: False)
    pipe = load_difflux(if_folders["IFPipeline"])
    with caplog.at_level("WARNING", logger="difflux"):
        upper, _ = pipe.encode_prompt("A RED Cat", False, clean_caption=True)
    assert "beautifulsoup4 and ftfy" in caplog.text
    lower, _ = pipe.encode_prompt("a red cat", False, clean_caption=False)
    assert max_diff(upper, lower) == 0.0
    assert upper.shape[1] == 77


def test_prompt_embeds_equal_the_prompt(if_folders: dict[str, Path]) -> None:
    pipe = load_difflux(if_folders["IFPipeline"])
    embeds, negative = pipe.encode_prompt("a red cat", True, negative_prompt="a dog", clean_caption=False)
    args: dict[str, Any] = {"num_inference_steps": 2, "output_type": "pt", "clean_caption": False}
    a = pipe(prompt="a red cat", negative_prompt="a dog", **args, generator=gen(1)).images
    b = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, **args, generator=gen(1)).images
    assert max_diff(a, b) <= TOL


def test_generator_list_one_image_each(if_folders: dict[str, Path]) -> None:
    pipe = load_difflux(if_folders["IFPipeline"])
    args: dict[str, Any] = {"num_inference_steps": 2, "output_type": "pt", "clean_caption": False}
    both = pipe(prompt="a red cat", num_images_per_prompt=2, generator=[gen(3), gen(4)], **args).images
    alone = pipe(prompt="a red cat", generator=gen(4), **args).images
    assert max_diff(both[1:], alone) <= TOL


def test_callback_on_step_end_sees_and_replaces_samples(if_folders: dict[str, Path]) -> None:
    pipe = load_difflux(if_folders["IFPipeline"])
    seen: list[tuple[int, ...]] = []

    def zero(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(tuple(tensors["latents"].shape))
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = pipe(prompt="a cat", num_inference_steps=2, output_type="pt", callback_on_step_end=zero, generator=gen(0))
    assert seen == [(1, 3, SIZE, SIZE)] * 2
    assert float(out.images.abs().max()) == 0.0


BAD = [
    ("IFPipeline", {"prompt": None}, "prompt"),
    ("IFPipeline", {"prompt": 3}, "prompt must be"),
    ("IFPipeline", {"height": 30}, "multiple"),
    ("IFPipeline", {"output_type": "latents"}, "output_type"),
    ("IFPipeline", {"clean_caption": "yes"}, "clean_caption"),
    ("IFPipeline", {"num_images_per_prompt": 0}, "num_images_per_prompt"),
    ("IFPipeline", {"generator": [gen(0), gen(1)]}, "generator"),
    ("IFPipeline", {"callback_on_step_end": print, "callback_on_step_end_tensor_inputs": ["nope"]}, "nope"),
    ("IFSuperResolutionPipeline", {"image": None}, "needs image"),
    ("IFSuperResolutionPipeline", {"noise_level": 1000}, "noise_level"),
    ("IFSuperResolutionPipeline", {"image": torch.full((1, 3, 16, 16), float("nan"))}, "image"),
    ("IFSuperResolutionPipeline", {"image": torch.zeros(2, 3, 16, 16)}, "2 images for 1 prompts"),
    ("IFImg2ImgPipeline", {"strength": 1.5}, "strength"),
    ("IFImg2ImgPipeline", {"image": None}, "needs image"),
    ("IFImg2ImgPipeline", {"image": "x.png"}, "image must be"),
    ("IFImg2ImgSuperResolutionPipeline", {"image": None}, "needs image"),
    ("IFImg2ImgSuperResolutionPipeline", {"original_image": None}, "needs image"),
    ("IFInpaintingPipeline", {"mask_image": None}, "needs mask_image"),
    ("IFInpaintingPipeline", {"mask_image": torch.zeros(1, 1, 8, 8)}, "mask_image is"),
    ("IFInpaintingSuperResolutionPipeline", {"noise_level": -1}, "noise_level"),
]


@pytest.mark.parametrize(("name", "bad", "match"), BAD)
def test_bad_input_fails_before_any_model_runs(
    if_folders: dict[str, Path], name: str, bad: dict[str, Any], match: str
) -> None:
    pipe = load_difflux(if_folders[name])

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model ran")

    pipe.unet.forward = refuse
    pipe.text_encoder.forward = refuse
    args = {**_inputs(name, {}), **bad}
    with pytest.raises((TypeError, ValueError), match=match):
        pipe(**args)


@pytest.mark.parametrize("name", ["IFPipeline", "IFSuperResolutionPipeline"])
def test_difflux_folders_load_in_diffusers(if_folders: dict[str, Path], tmp_path: Path, name: str) -> None:
    ours = load_difflux(if_folders[name])
    ours.save_pretrained(tmp_path / name)
    theirs = _diffusers(tmp_path / name)
    assert type(theirs).__name__ == name
    args = _inputs(name, {})
    a, b = ours(**args, generator=gen(0)).images, theirs(**args, generator=gen(0)).images
    assert max_diff(a, b) <= TOL
