"""The embedded default model: packaged, loadable by name, Diffusers-format, and it draws the digit asked for."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets as sklearn_datasets
import sklearn.svm as sklearn_svm
import torch
import torch.nn.functional as F
from difflux import DiffusionPipeline
from difflux_pipelines_unconditional import DDIMPipeline, default_model_path
from difflux_pipelines_unconditional.plugin import DEFAULT_MODEL
from unconditional_helpers import assert_same, diffusers


def test_packaged_in_diffusers_format_within_budget() -> None:
    folder = default_model_path()
    assert folder.parent.name == "default_model" and folder.parent.parent.name == "difflux_pipelines_unconditional"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "DDIMPipeline"
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 10 * 2**20, f"the default model takes {size} bytes"
    assert list(folder.glob("unet/*.safetensors")) and not list(folder.rglob("*.bin"))


def test_loads_by_name_and_in_diffusers() -> None:
    pipe = DiffusionPipeline.from_pretrained(DEFAULT_MODEL)
    assert isinstance(pipe, DDIMPipeline)
    assert pipe.unet.config.num_class_embeds == 10 and pipe.unet.config.sample_size == 16
    reference = diffusers.DDIMPipeline.from_pretrained(default_model_path())
    x = torch.randn((2, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    t, labels = torch.tensor(500), torch.tensor([3, 8])
    with torch.no_grad():
        assert_same(pipe.unet(x, t, class_labels=labels).sample, reference.unet(x, t, class_labels=labels).sample)


def test_draws_the_requested_digit() -> None:
    """A classifier fitted on scikit-learn's digits labels 100 generated digits (ten per class, 8x8) as asked."""
    data = sklearn_datasets.load_digits()
    classifier = sklearn_svm.SVC(gamma=0.001).fit(data.data, data.target)
    pipe = DiffusionPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    wanted = torch.arange(100) % 10
    images = pipe(
        batch_size=100,
        class_labels=wanted,
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(1234),
        output_type="pt",
    ).images
    features = F.adaptive_avg_pool2d(images, 8).reshape(100, -1).numpy() * 16  # sklearn's 0..16 grey levels
    accuracy = float(np.mean(classifier.predict(features) == wanted.numpy()))
    print(f"classifier accuracy: {accuracy:.2f}")
    assert accuracy >= 0.9


def test_default_model_path_names_the_fix_when_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from difflux_pipelines_unconditional import default_model as module

    monkeypatch.setattr(module, "DEFAULT_MODEL_NAME", "not-there")
    with pytest.raises(FileNotFoundError, match=r"train_digits\.py"):
        module.default_model_path()


def test_training_script_writes_a_loadable_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``examples/train_digits.py`` (two optimizer steps) writes a folder that loads as the shipped one does."""
    import runpy

    script = Path(__file__).resolve().parents[3] / "examples" / "train_digits.py"
    if not script.is_file():
        pytest.skip("the examples folder is not here (installed package)")
    monkeypatch.setattr("sys.argv", [str(script), "--steps", "2", "--no-evaluate", "--output", str(tmp_path / "d")])
    runpy.run_path(str(script), run_name="__main__")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "d")
    assert isinstance(pipe, DDIMPipeline)
    shipped = json.loads((default_model_path() / "unet" / "config.json").read_text())
    written = json.loads((tmp_path / "d" / "unet" / "config.json").read_text())
    assert written == shipped  # the script's architecture is the shipped one
