"""The embedded text-to-image model: packaged in the Diffusers layout, loadable by name, identical to
Diffusers on it, and it draws the digit the prompt asks for (txt2img, guidance, img2img, inpainting, CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difflux import DiffusionPipeline
from difflux_stable_diffusion import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from difflux_stable_diffusion.default_model import default_model_path
from difflux_stable_diffusion.plugin import TEXT2IMG_MODEL

pytest.importorskip("sklearn")
from difflux.testing.digits import NUMBER_WORDS, digit_accuracy, predict_digits

STEPS = 20  # the CLI's default for this model


@pytest.fixture(scope="module")
def pipe() -> Any:
    pipe = DiffusionPipeline.from_pretrained(TEXT2IMG_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _digit_images(label: int, count: int) -> torch.Tensor:
    """Real digits of scikit-learn's set, ``(count, 3, 16, 16)`` in ``[0, 1]`` (bilinear upscaling)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pick = np.flatnonzero(data.target == label)[:count]
    images = torch.tensor(data.images[pick], dtype=torch.float32)[:, None] / 16
    return torch.nn.functional.interpolate(images, size=16, mode="bilinear").expand(-1, 3, -1, -1)


def test_packaged_in_diffusers_format_within_budget() -> None:
    folder = default_model_path()
    assert folder.parent.name == "default_model" and folder.parent.parent.name == "difflux_stable_diffusion"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert (folder / "tokenizer" / "tokenizer.json").is_file()  # what transformers writes for CLIPTokenizer
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 8 * 2**20, f"the embedded text-to-image model takes {size} bytes"
    assert not list(folder.rglob("*.bin")) and len(list(folder.rglob("*.safetensors"))) == 3


def test_every_caption_word_is_one_token(pipe: Any) -> None:
    """The offline tokenizer knows the number words and numerals as whole tokens (no byte pieces)."""
    vocab = pipe.tokenizer.get_vocab()
    for word in [*NUMBER_WORDS, *"0123456789", "handwritten", "digit", "thick", "thin", "slanted", "strokes"]:
        assert f"{word}</w>" in vocab, word
        ids = pipe.tokenizer(word).input_ids
        assert ids == [pipe.tokenizer.bos_token_id, vocab[f"{word}</w>"], pipe.tokenizer.eos_token_id]


def test_loads_by_name_and_matches_diffusers(pipe: Any) -> None:
    """Diffusers' own StableDiffusionPipeline on the same folder draws the same images (guidance and a
    negative prompt included)."""
    import diffusers

    assert isinstance(pipe, StableDiffusionPipeline)
    reference = diffusers.StableDiffusionPipeline.from_pretrained(default_model_path(), safety_checker=None)
    reference.set_progress_bar_config(disable=True)
    call = {
        "prompt": ["a handwritten seven", "the digit 3, thick strokes"],
        "negative_prompt": ["blurry", "one"],
        "guidance_scale": 5.0,
        "num_inference_steps": 4,
        "output_type": "np",
    }
    ours = pipe(**call, generator=torch.Generator().manual_seed(0)).images
    theirs = reference(**call, generator=torch.Generator().manual_seed(0)).images
    assert ours.shape == theirs.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


def test_prompts_draw_the_requested_digit(pipe: Any) -> None:
    """Number words, numerals and captions with styles: a classifier fitted on scikit-learn's digits reads
    at least 95% of 40 images (default DDIM sampler, 20 steps, guidance 7.5) as the digit asked for."""
    templates = ("a handwritten {word}", "{digit}", "the digit {digit}, thick strokes", "{word}")
    prompts = [t.format(word=NUMBER_WORDS[d], digit=d) for t in templates for d in range(10)]
    wanted = [d for _ in templates for d in range(10)]
    images = pipe(prompts, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="pt")
    accuracy = digit_accuracy(images.images, wanted)
    print(f"text-to-image classifier accuracy: {accuracy:.2f}")
    assert accuracy >= 0.95


def test_img2img_follows_the_prompt_and_the_image(pipe: Any) -> None:
    """From real ones: a light touch (strength 0.2) stays near them; a heavy one (0.95) draws the eight asked for."""
    img2img = StableDiffusionImg2ImgPipeline(**pipe.components, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    ones = _digit_images(1, 5)
    call = {"prompt": ["a handwritten eight"] * 5, "image": ones, "num_inference_steps": 10, "output_type": "pt"}
    light = img2img(**call, strength=0.2, generator=torch.Generator().manual_seed(0)).images
    heavy = img2img(**call, strength=0.95, generator=torch.Generator().manual_seed(0)).images
    assert (light - ones).abs().mean() < 0.5 * (heavy - ones).abs().mean()
    assert digit_accuracy(heavy, [8] * 5) >= 0.8


def test_inpainting_repaints_only_the_mask(pipe: Any) -> None:
    """Masking the whole image draws the prompt's digit; masking the top half leaves the bottom half as it was."""
    inpaint = StableDiffusionInpaintPipeline(**pipe.components, requires_safety_checker=False)
    inpaint.set_progress_bar_config(disable=True)
    zeros = _digit_images(0, 5)
    full = torch.ones(5, 1, 16, 16)
    top = torch.zeros(5, 1, 16, 16)
    top[:, :, :8] = 1
    call = {"prompt": ["a handwritten seven"] * 5, "image": zeros, "num_inference_steps": 10, "output_type": "pt"}
    repainted = inpaint(**call, mask_image=full, generator=torch.Generator().manual_seed(0)).images
    assert digit_accuracy(repainted, [7] * 5) >= 0.8
    half = inpaint(**call, mask_image=top, generator=torch.Generator().manual_seed(0)).images
    bottom_change = (half[:, :, 10:] - zeros[:, :, 10:]).abs().mean()
    top_change = (half[:, :, :6] - zeros[:, :, :6]).abs().mean()
    assert bottom_change < 0.1 < top_change


def test_cli_prompt_picks_the_text_to_image_model(tmp_path: Path) -> None:
    """``difflux generate --prompt`` with no model draws the digit with this model; no prompt keeps the digits model."""
    import PIL.Image
    from difflux.cli import main

    out = tmp_path / "seven.png"
    assert main(["generate", "--prompt", "a handwritten seven", "--seed", "0", "--output", str(out)]) == 0
    with PIL.Image.open(out) as image:
        assert image.size == (64, 64)  # 16x16, enlarged for viewing
        small = image.convert("L").resize((16, 16), PIL.Image.Resampling.BOX)
    assert predict_digits([small]).tolist() == [7]
    grid = tmp_path / "grid.png"
    assert main(["generate", "--class-label", "3", "--num-images", "2", "--output", str(grid)]) == 0
    with PIL.Image.open(grid) as image:
        assert image.size == (128, 64)  # two 16x16 digits from the class-conditional model


def test_default_model_path_names_the_fix_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from difflux_stable_diffusion import default_model as module

    monkeypatch.setattr(module, "TEXT2IMG_MODEL_NAME", "not-there")
    with pytest.raises(FileNotFoundError, match=r"train_digits_text2img\.py"):
        module.default_model_path()


def test_training_script_writes_a_loadable_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``examples/train_digits_text2img.py`` (two optimizer steps each) writes the shipped architecture."""
    import runpy

    script = Path(__file__).resolve().parents[3] / "examples" / "train_digits_text2img.py"
    if not script.is_file():
        pytest.skip("the examples folder is not here (installed package)")
    out = tmp_path / "t2i"
    argv = [str(script), "--vae-steps", "2", "--unet-steps", "2", "--no-evaluate", "--output", str(out)]
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(script), run_name="__main__")
    loaded = DiffusionPipeline.from_pretrained(out)
    assert isinstance(loaded, StableDiffusionPipeline)
    for part in ("unet", "vae", "text_encoder"):
        shipped = json.loads((default_model_path() / part / "config.json").read_text())
        written = json.loads((out / part / "config.json").read_text())
        ignore = {"scaling_factor", "_name_or_path", "transformers_version", "dtype", "torch_dtype"}
        assert {k: v for k, v in written.items() if k not in ignore} == {
            k: v for k, v in shipped.items() if k not in ignore
        }, part
    vocab = json.loads((out / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert vocab == json.loads((default_model_path() / "tokenizer/tokenizer.json").read_text())["model"]["vocab"]
    assert not (tmp_path / "t2i.tokenizer").exists()  # the scratch tokenizer folder is cleaned up
