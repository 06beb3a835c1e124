"""The transformers bridge: which classes load, with which options, and round trips through a pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from difflux import ConfigError, DiffusionPipeline, LoadError, LoadOptions, hookimpl
from difflux.config import read_json
from difflux.registry import reset_registry
from difflux_transformers import plugin as bridge_plugin
from difflux_transformers.bridge import load_component, resolve_class
from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer


class TextPipeline(DiffusionPipeline):
    """A pipeline made only of transformers components, to exercise the bridge through from_pretrained."""

    _optional_components = ("feature_extractor",)

    def __init__(
        self,
        text_encoder: transformers.CLIPTextModel,
        tokenizer: transformers.CLIPTokenizer,
        feature_extractor: Any = None,
    ) -> None:
        super().__init__()
        self.register_modules(text_encoder=text_encoder, tokenizer=tokenizer, feature_extractor=feature_extractor)

    def __call__(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer(prompt, padding="max_length", max_length=16, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]


class _Registers:
    @staticmethod
    @hookimpl
    def difflux_register_pipelines(register: Any) -> None:
        register(TextPipeline)


@pytest.fixture
def registry() -> Iterator[None]:
    # the installed entry points (this plugin included) plus the test pipeline
    reset_registry(extra_plugins=[("text-pipeline", _Registers())])
    try:
        yield
    finally:
        reset_registry()


@pytest.fixture
def text_encoder_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "text_encoder"
    tiny_clip_text_model(0).save_pretrained(folder)
    return folder


# -- which classes load -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer", "CLIPImageProcessor", "T5EncoderModel"]
)
def test_models_tokenizers_and_processors_resolve(name: str) -> None:
    cls = resolve_class(name)
    assert issubclass(
        cls,
        (
            transformers.PreTrainedModel,
            transformers.PreTrainedTokenizerBase,
            transformers.ImageProcessingMixin,
        ),
    )


def test_old_feature_extractor_name_is_renamed() -> None:
    assert issubclass(resolve_class("CLIPFeatureExtractor"), transformers.ImageProcessingMixin)


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("os", "has no such class"),  # not exported by transformers at all
        ("pipeline", "function"),  # a function
        ("Pipeline", "not a model, tokenizer"),  # a class, but not a component
        ("CLIPTextConfig", "not a model, tokenizer"),
        ("_LazyModule", "not a class name"),
        ("os.system", "not a class name"),
        ("NoSuchModelAnywhere", "has no such class"),
    ],
)
def test_other_names_are_refused(name: str, said: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_component(name, tmp_path, LoadOptions())
    message = str(info.value)
    assert said in message
    assert str(tmp_path) in message  # says where


def test_os_is_refused_even_if_transformers_exports_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    monkeypatch.setattr(transformers, "os", os, raising=False)
    with pytest.raises(ConfigError, match="module"):
        load_component("os", tmp_path, LoadOptions())


def test_other_libraries_are_left_to_other_plugins(tmp_path: Path) -> None:
    assert bridge_plugin.difflux_load_component("diffusers", "CLIPTextModel", tmp_path, LoadOptions()) is None


# -- load options -------------------------------------------------------------------------------


def test_torch_dtype_and_device(text_encoder_dir: Path) -> None:
    model = load_component("CLIPTextModel", text_encoder_dir, LoadOptions(torch_dtype=torch.float16, device_map="cpu"))
    assert isinstance(model, transformers.CLIPTextModel)
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    same = load_component("CLIPTextModel", text_encoder_dir, LoadOptions())
    assert {p.dtype for p in same.parameters()} == {torch.float32}


@pytest.mark.parametrize(("torch_dtype", "expected"), [(None, torch.float32), ("auto", torch.float16)])
def test_torch_dtype_none_is_the_default_dtype_as_for_difflux_models(
    tmp_path: Path, torch_dtype: object, expected: torch.dtype
) -> None:
    """transformers 5 reads ``dtype=None`` as ``"auto"``; difflux's rule is the same for every component."""
    tiny_clip_text_model(0).to(torch.float16).save_pretrained(tmp_path / "te")
    model = load_component("CLIPTextModel", tmp_path / "te", LoadOptions(torch_dtype=torch_dtype))
    assert {p.dtype for p in model.parameters()} == {expected}


def test_variant_files_are_used_when_present(tmp_path: Path) -> None:
    model = tiny_clip_text_model(0)
    model.save_pretrained(tmp_path / "te")
    other = tiny_clip_text_model(1)
    other.save_pretrained(tmp_path / "te", variant="fp16")
    files = sorted(p.name for p in (tmp_path / "te").iterdir())
    assert "model.fp16.safetensors" in files and "model.safetensors" in files
    default = load_component("CLIPTextModel", tmp_path / "te", LoadOptions())
    variant = load_component("CLIPTextModel", tmp_path / "te", LoadOptions(variant="fp16"))
    key = "embeddings.token_embedding.weight"
    assert torch.equal(default.state_dict()[key], model.state_dict()[key])
    assert torch.equal(variant.state_dict()[key], other.state_dict()[key])
    # a variant the folder lacks falls back to the default files, as Diffusers does per component
    fallback = load_component("CLIPTextModel", tmp_path / "te", LoadOptions(variant="bf16"))
    assert torch.equal(fallback.state_dict()[key], model.state_dict()[key])


def test_pickled_weights_need_opting_in(tmp_path: Path) -> None:
    folder = tmp_path / "te"
    model = tiny_clip_text_model(0)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(LoadError, match="use_safetensors=False"):
        load_component("CLIPTextModel", folder, LoadOptions())
    loaded = load_component("CLIPTextModel", folder, LoadOptions(use_safetensors=False))
    key = "final_layer_norm.weight"
    assert torch.equal(loaded.state_dict()[key], model.state_dict()[key])


def test_missing_folder_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="does not exist"):
        load_component("CLIPTextModel", tmp_path / "nowhere", LoadOptions())


# -- through a pipeline -------------------------------------------------------------------------


def _pipeline(tmp_path: Path) -> TextPipeline:
    return TextPipeline(text_encoder=tiny_clip_text_model(0), tokenizer=tiny_clip_tokenizer(tmp_path / "vocab"))


def test_pipeline_round_trip(registry: None, tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path)
    expected = pipe("a photo of a cat")
    pipe.save_pretrained(tmp_path / "saved")
    index = read_json(tmp_path / "saved" / "model_index.json")
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["feature_extractor"] == [None, None]
    assert (tmp_path / "saved" / "text_encoder" / "model.safetensors").is_file()
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(loaded, TextPipeline)
    assert type(loaded.text_encoder) is transformers.CLIPTextModel
    assert type(loaded.tokenizer) is type(pipe.tokenizer)
    assert torch.allclose(loaded("a photo of a cat"), expected, atol=1e-6)


def test_per_component_dtype_through_from_pretrained(registry: None, tmp_path: Path) -> None:
    _pipeline(tmp_path).save_pretrained(tmp_path / "saved")
    loaded = TextPipeline.from_pretrained(
        tmp_path / "saved", torch_dtype={"text_encoder": torch.bfloat16, "default": torch.float32}
    )
    assert loaded.text_encoder.dtype == torch.bfloat16
    assert TextPipeline.from_pretrained(tmp_path / "saved").text_encoder.dtype == torch.float32


def test_variant_round_trip(registry: None, tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path)
    pipe.save_pretrained(tmp_path / "saved", variant="fp16")
    assert (tmp_path / "saved" / "text_encoder" / "model.fp16.safetensors").is_file()
    loaded = TextPipeline.from_pretrained(tmp_path / "saved", variant="fp16")
    assert torch.allclose(loaded("a dog"), pipe("a dog"))


def test_refused_entry_in_model_index(registry: None, tmp_path: Path) -> None:
    _pipeline(tmp_path).save_pretrained(tmp_path / "saved")
    index_file = tmp_path / "saved" / "model_index.json"
    index = json.loads(index_file.read_text())
    index["tokenizer"] = ["transformers", "pipeline"]
    index_file.write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"transformers\.pipeline .*not a model, tokenizer"):
        DiffusionPipeline.from_pretrained(tmp_path / "saved")


def test_feature_extractor_old_name_loads(registry: None, tmp_path: Path) -> None:
    pipe = _pipeline(tmp_path)
    pipe.feature_extractor = None
    pipe.save_pretrained(tmp_path / "saved")
    transformers.CLIPImageProcessor(crop_size=32, size=32).save_pretrained(tmp_path / "saved" / "feature_extractor")
    index_file = tmp_path / "saved" / "model_index.json"
    index = json.loads(index_file.read_text())
    index["feature_extractor"] = ["transformers", "CLIPFeatureExtractor"]
    index_file.write_text(json.dumps(index))
    loaded = TextPipeline.from_pretrained(tmp_path / "saved")
    assert isinstance(loaded.feature_extractor, transformers.ImageProcessingMixin)


# -- staying light ------------------------------------------------------------------------------


def test_building_the_registry_imports_no_transformers() -> None:
    code = textwrap.dedent(
        """
        import sys
        import difflux
        registry = difflux.get_registry()
        assert "transformers" in registry.plugins, sorted(registry.plugins)
        heavy = [m for m in ("transformers", "difflux_transformers.bridge") if m in sys.modules]
        assert not heavy, heavy
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
