"""DiffusionPipeline: loading, saving, model_index.json interop with diffusers, errors, devices."""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difflux import DiffusionPipeline, ImagePipelineOutput, ModelMixin, SchedulerMixin, hookimpl
from difflux.errors import ConfigError, LoadError, UnknownClassError
from difflux.image import numpy_to_pil, postprocess, pt_to_numpy
from difflux.options import LoadOptions
from difflux.registry import RegisterComponent, RegisterPipeline, RegisterScheduler, reset_registry
from difflux.testing.pipeline import PipelineConformance
from difflux.torch_utils import randn_tensor

# -- a tiny model, scheduler and pipeline, registered by a throwaway plugin ---------------------


class TinyAttention(torch.nn.Module):
    attention_backend: str | None = None


class TinyModel(ModelMixin):
    def __init__(self, channels: int = 3, hidden: int = 4) -> None:
        super().__init__()
        self.conv_in = torch.nn.Conv2d(channels, hidden, 3, padding=1)
        self.attn = TinyAttention()
        self.conv_out = torch.nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.conv_out(torch.tanh(self.conv_in(sample) + timestep.to(sample.dtype) / 100))


class TinyScheduler(SchedulerMixin):
    def __init__(self, num_train_timesteps: int = 100, step_scale: float = 0.5) -> None:
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.timesteps = torch.linspace(self.config.num_train_timesteps - 1, 0, num_inference_steps).long()

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        return sample - self.config.step_scale * model_output


class TinyPipeline(DiffusionPipeline):
    _optional_components = ("extra",)
    model_cpu_offload_seq = "model->extra"

    def __init__(
        self, model: TinyModel, scheduler: TinyScheduler, extra: TinyModel | None = None, gain: float = 1.0
    ) -> None:
        super().__init__()
        self.register_modules(model=model, scheduler=scheduler, extra=extra)

    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | None = None,
        num_inference_steps: int = 2,
        output_type: str = "np",
    ) -> ImagePipelineOutput:
        sample = randn_tensor((batch_size, 3, 8, 8), generator=generator, device=self.device, dtype=self.dtype)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            sample = self.scheduler.step(self.model(sample, t), t, sample)
        if self.extra is not None:
            sample = sample + self.extra(sample, t)
        images = postprocess(sample * self.config.gain, output_type)  # type: ignore[arg-type]
        return ImagePipelineOutput(images=images)


class UncondPipeline(DiffusionPipeline):
    """Stands in for DDPMPipeline: reads and writes folders that diffusers wrote or reads."""

    def __init__(self, unet: Any, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)


class TinyPlugin:
    @hookimpl
    def difflux_register_pipelines(self, register: RegisterPipeline) -> None:
        register(TinyPipeline)

    @hookimpl
    def difflux_register_components(self, register: RegisterComponent) -> None:
        register(TinyModel)

    @hookimpl
    def difflux_register_schedulers(self, register: RegisterScheduler) -> None:
        register(TinyScheduler)


class DDPMStandIn:
    @hookimpl
    def difflux_register_pipelines(self, register: RegisterPipeline) -> None:
        register(UncondPipeline, name="DDPMPipeline")

    @hookimpl
    def difflux_register_schedulers(self, register: RegisterScheduler) -> None:
        register(TinyScheduler, name="DDPMScheduler")


def use_plugins(*plugins: tuple[str, Any]) -> None:
    reset_registry(extra_plugins=list(plugins))


@pytest.fixture(autouse=True)
def tiny_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("DIFFLUX_LOAD_PLUGINS", raising=False)
    use_plugins(("tiny", TinyPlugin()))
    yield
    reset_registry()


def make_pipe(gain: float = 1.0, extra: bool = False) -> TinyPipeline:
    torch.manual_seed(0)
    pipe = TinyPipeline(TinyModel(), TinyScheduler(), TinyModel() if extra else None, gain=gain)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe: DiffusionPipeline, seed: int = 0) -> np.ndarray:
    return np.asarray(pipe(generator=torch.Generator().manual_seed(seed)).images)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_index(folder: Path, **entries: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"_class_name": "TinyPipeline", "_diffusers_version": "0.42.1", **entries}
    (folder / "model_index.json").write_text(json.dumps(data))
    return folder


# -- the conformance kit, on the tiny pipeline --------------------------------------------------


class TestTinyPipelineConformance(PipelineConformance):
    pipeline_class = TinyPipeline

    def make_components(self) -> dict[str, Any]:
        torch.manual_seed(0)
        return {"model": TinyModel(), "scheduler": TinyScheduler(), "extra": TinyModel(hidden=2)}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"generator": torch.Generator().manual_seed(seed), "num_inference_steps": 2, "output_type": "pt"}


class TestTinyPipelineConformanceBF16(TestTinyPipelineConformance):
    other_dtype = torch.bfloat16

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {**super().make_inputs(seed), "output_type": "pil"}


# -- components and config values ---------------------------------------------------------------


def test_components_and_config_values_are_told_apart() -> None:
    assert TinyPipeline.component_names() == ("model", "scheduler", "extra")
    assert TinyPipeline.config_value_names() == ("gain",)
    pipe = make_pipe(gain=2.0)
    assert list(pipe.components) == ["model", "scheduler", "extra"]
    assert pipe.components["extra"] is None
    assert pipe.config["gain"] == 2.0
    assert pipe.config["model"] == ("diffusers", "TinyModel")
    assert pipe.config["extra"] == (None, None)


def test_model_index_written_as_diffusers_does(tmp_path: Path) -> None:
    make_pipe(gain=2.0).save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index == {
        "_class_name": "TinyPipeline",
        "_diffusers_version": "0.42.1",
        "model": ["diffusers", "TinyModel"],
        "scheduler": ["diffusers", "TinyScheduler"],
        "extra": [None, None],
        "gain": 2.0,
        "_difflux_plugins": {"TinyPipeline": "tiny", "TinyModel": "tiny", "TinyScheduler": "tiny"},
    }
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["model", "model_index.json", "scheduler"]
    assert (tmp_path / "p" / "model" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tmp_path / "p" / "scheduler" / "scheduler_config.json").is_file()


def test_config_values_and_overrides_round_trip(tmp_path: Path) -> None:
    pipe = make_pipe(gain=2.0, extra=True)
    pipe.save_pretrained(tmp_path / "p")
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert isinstance(loaded, TinyPipeline)
    assert loaded.config["gain"] == 2.0
    assert loaded.name_or_path == str(tmp_path / "p")
    torch.testing.assert_close(loaded.extra.conv_in.weight, pipe.extra.conv_in.weight)  # type: ignore[union-attr]

    scheduler = TinyScheduler(step_scale=0.25)
    again = TinyPipeline.from_pretrained(tmp_path / "p", scheduler=scheduler, extra=None, gain=3.0)
    assert again.scheduler is scheduler
    assert again.extra is None
    assert again.config["gain"] == 3.0


def test_optional_component_may_be_absent(tmp_path: Path) -> None:
    make_pipe().save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    del index["extra"]
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    assert TinyPipeline.from_pretrained(tmp_path / "p").extra is None


def test_torch_dtype_per_component(tmp_path: Path) -> None:
    make_pipe(extra=True).save_pretrained(tmp_path / "p")
    pipe = TinyPipeline.from_pretrained(
        tmp_path / "p", torch_dtype={"model": torch.float64, "default": "bfloat16"}
    )
    assert pipe.model.dtype == torch.float64
    assert pipe.extra is not None and pipe.extra.dtype == torch.bfloat16
    one = TinyPipeline.from_pretrained(tmp_path / "p", torch_dtype="fp16")
    assert {one.model.dtype, one.extra.dtype} == {torch.float16}  # type: ignore[union-attr]


def test_output_loading_info(tmp_path: Path) -> None:
    make_pipe(extra=True).save_pretrained(tmp_path / "p")
    pipe, info = TinyPipeline.from_pretrained(tmp_path / "p", output_loading_info=True)
    assert isinstance(pipe, TinyPipeline)
    assert set(info) == {"model", "scheduler", "extra"}
    assert info["model"]["missing_keys"] == [] and info["model"]["unexpected_keys"] == []
    assert info["scheduler"] is None


def test_component_loaded_hook_replaces(tmp_path: Path) -> None:
    make_pipe().save_pretrained(tmp_path / "p")
    seen: list[str] = []
    replacement = TinyScheduler(step_scale=0.125)

    class Observer:
        @hookimpl
        def difflux_component_loaded(self, name: str, component: Any, options: LoadOptions) -> Any:
            seen.append(name)
            return replacement if name == "scheduler" else None

    use_plugins(("tiny", TinyPlugin()), ("observer", Observer()))
    pipe = TinyPipeline.from_pretrained(tmp_path / "p", model=TinyModel())
    assert seen == ["scheduler"]  # overrides and None components are not "loaded"
    assert pipe.scheduler is replacement


def test_load_component_hook_for_unregistered_library(tmp_path: Path) -> None:
    make_pipe().save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    index["model"] = ["otherlib", "OtherModel"]
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    calls: list[tuple[str, str, Path, Any]] = []

    class Bridge:
        @hookimpl
        def difflux_load_component(self, library: str, class_name: str, folder: Path, options: LoadOptions) -> Any:
            if library != "otherlib":
                return None
            calls.append((library, class_name, folder, options.torch_dtype))
            return TinyModel.from_pretrained(folder, torch_dtype=options.torch_dtype)

    use_plugins(("tiny", TinyPlugin()), ("bridge", Bridge()))
    pipe = TinyPipeline.from_pretrained(tmp_path / "p", torch_dtype={"model": torch.float64, "default": torch.float32})
    assert calls == [("otherlib", "OtherModel", tmp_path / "p" / "model", torch.float64)]
    assert pipe.model.dtype == torch.float64


# -- errors: each clear, and nothing written --------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    folder = tmp_path / "p"
    make_pipe().save_pretrained(folder)
    return folder


def load_fails(folder: Path, error: type[Exception], match: str, **kwargs: Any) -> str:
    """Loading ``folder`` raises ``error`` matching ``match``, and leaves every file as it was."""
    before = snapshot(folder)
    with pytest.raises(error, match=match) as err:
        DiffusionPipeline.from_pretrained(folder, **kwargs)
    assert snapshot(folder) == before, "a failed load changed the folder"
    return str(err.value)


def edit_index(folder: Path, **changes: Any) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    index.update(changes)
    (folder / "model_index.json").write_text(json.dumps(index))


def test_missing_model_index(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoadError, match=r"empty: no model_index\.json"):
        DiffusionPipeline.from_pretrained(tmp_path / "empty")


def test_malformed_model_index(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model_index.json").write_text('{"_class_name": "TinyPipeline",')
    load_fails(tmp_path / "bad", ConfigError, r"model_index\.json: not valid JSON \(line 1")
    (tmp_path / "bad" / "model_index.json").write_text('{"_class_name": "TinyPipeline", "model": "TinyModel"}')
    load_fails(tmp_path / "bad", ConfigError, r"entry 'model' must be \[library, ClassName\]")


@pytest.mark.parametrize("name", ["../x", "a/b", "/abs", "..", "c:\\x", "a\\b"])
def test_entry_escaping_the_folder_is_refused(saved: Path, name: str) -> None:
    index = json.loads((saved / "model_index.json").read_text())
    index[name] = ["diffusers", "TinyModel"]
    (saved / "model_index.json").write_text(json.dumps(index))
    message = load_fails(saved, ConfigError, "is not a plain folder name")
    assert repr(name) in message


def _what_to_do(dist: str, plugin: str) -> str:
    """``pip install`` where ``dist`` is not installed; else (these tests turn autoload off) how to load it."""
    from importlib.metadata import entry_points

    if any(ep.dist is not None and ep.dist.name == dist for ep in entry_points(group="difflux")):
        return f"add '{plugin}' to DIFFLUX_LOAD_PLUGINS"
    return f"pip install {dist}"


def test_unknown_component_class_names_the_distribution(saved: Path) -> None:
    edit_index(saved, model=["diffusers", "UNet2DConditionModel"])
    message = load_fails(saved, UnknownClassError, "UNet2DConditionModel")
    assert _what_to_do("difflux-models", "models") in message
    assert "'model'" in message and "model_index.json" in message


def test_unknown_pipeline_class_names_the_distribution(saved: Path) -> None:
    edit_index(saved, _class_name="StableDiffusionPipeline")
    message = load_fails(saved, UnknownClassError, "StableDiffusionPipeline.*difflux-stable-diffusion")
    assert _what_to_do("difflux-stable-diffusion", "stable-diffusion") in message


def test_folder_saved_with_a_plugin_names_it_when_missing(saved: Path) -> None:
    use_plugins()  # the plugin that wrote the folder is gone
    load_fails(saved, UnknownClassError, r"pipeline diffusers\.TinyPipeline .*distribution 'tiny'")

    class OnlyPipeline:
        @hookimpl
        def difflux_register_pipelines(self, register: RegisterPipeline) -> None:
            register(TinyPipeline)

    use_plugins(("pipe-only", OnlyPipeline()))
    load_fails(saved, UnknownClassError, r"TinyModel \(component 'model' in .*'tiny': pip install tiny")


@pytest.mark.parametrize("dtype", ["float17", "int8", {"model": "nope"}, 3])
def test_dtype_that_is_not_a_dtype(saved: Path, dtype: Any) -> None:
    load_fails(saved, ConfigError, "is not a floating-point torch dtype", torch_dtype=dtype)


def test_wrong_type_override(saved: Path) -> None:
    message = load_fails(saved, TypeError, "component 'scheduler' must be", scheduler=TinyModel())
    assert "'scheduler'" in message and "TinyScheduler" in message
    assert f"got {TinyModel.__module__}.TinyModel" in message
    load_fails(saved, TypeError, "model=None, but 'model' is not an optional component", model=None)


def test_unknown_keyword(saved: Path) -> None:
    message = load_fails(saved, TypeError, "unexpected keyword arguments unet", unet=TinyModel())
    assert "components: model, scheduler, extra" in message and "config values: gain" in message
    assert "torch_dtype" in message and "variant" in message


def test_missing_required_entry(saved: Path) -> None:
    index = json.loads((saved / "model_index.json").read_text())
    del index["scheduler"]
    (saved / "model_index.json").write_text(json.dumps(index))
    load_fails(saved, LoadError, "no entry for the component 'scheduler' that TinyPipeline needs")
    assert isinstance(DiffusionPipeline.from_pretrained(saved, scheduler=TinyScheduler()), TinyPipeline)


# -- saving is all-or-nothing -------------------------------------------------------------------


def test_failed_save_leaves_the_old_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "p"
    make_pipe(gain=1.0).save_pretrained(folder)
    before = snapshot(folder)

    def broken_save(self: TinyScheduler, save_directory: Any) -> Path:
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        (Path(save_directory) / "scheduler_config.json").write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(TinyScheduler, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        make_pipe(gain=5.0, extra=True).save_pretrained(folder)
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"], "a temporary folder was left behind"


def test_resave_without_a_component_drops_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    make_pipe(extra=True).save_pretrained(folder)
    assert (folder / "extra").is_dir()
    (folder / "README.md").write_text("kept")
    make_pipe(extra=False).save_pretrained(folder)
    assert not (folder / "extra").exists()
    assert (folder / "README.md").read_text() == "kept"
    assert TinyPipeline.from_pretrained(folder).extra is None


# -- interop with diffusers at the model_index.json level ---------------------------------------


def tiny_diffusers_ddpm() -> Any:
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=50))


def test_diffusers_written_folder_is_parsed_the_same(tmp_path: Path) -> None:
    tiny_diffusers_ddpm().save_pretrained(tmp_path / "d")
    calls: list[tuple[str, str, Path]] = []
    unet_stand_in = TinyModel()

    class Bridge:
        @hookimpl
        def difflux_load_component(self, library: str, class_name: str, folder: Path, options: LoadOptions) -> Any:
            calls.append((library, class_name, folder))
            return unet_stand_in

    use_plugins(("ddpm", DDPMStandIn()), ("bridge", Bridge()))
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "d")
    assert isinstance(pipe, UncondPipeline)
    assert calls == [("diffusers", "UNet2DModel", tmp_path / "d" / "unet")]
    assert pipe.unet is unet_stand_in
    # the scheduler came from diffusers' scheduler_config.json; keys TinyScheduler lacks are kept
    assert isinstance(pipe.scheduler, TinyScheduler)
    assert pipe.scheduler.config["num_train_timesteps"] == 50
    assert pipe.scheduler.config["beta_schedule"] == "linear"
    written = json.loads((tmp_path / "d" / "model_index.json").read_text())
    assert DiffusionPipeline.load_config(tmp_path / "d") == written


def test_difflux_model_index_reads_in_diffusers(tmp_path: Path) -> None:
    import diffusers

    make_pipe(gain=2.0, extra=True).save_pretrained(tmp_path / "p")
    theirs = diffusers.DiffusionPipeline.load_config(tmp_path / "p")
    ours = DiffusionPipeline.load_config(tmp_path / "p")
    assert theirs == ours
    assert theirs["model"] == ["diffusers", "TinyModel"] and theirs["gain"] == 2.0


def test_diffusers_loads_a_difflux_saved_folder(tmp_path: Path) -> None:
    """The private ``_difflux_plugins`` key does not disturb diffusers' loader."""
    import diffusers

    reference = tiny_diffusers_ddpm()
    reference.set_progress_bar_config(disable=True)
    use_plugins(("ddpm", DDPMStandIn()))
    ours = UncondPipeline(unet=reference.unet, scheduler=reference.scheduler)
    ours.save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["_difflux_plugins"] == {"DDPMPipeline": "ddpm"}
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDPMScheduler"]

    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert type(loaded) is diffusers.DDPMPipeline
    loaded.set_progress_bar_config(disable=True)
    expected = reference(generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np").images
    got = loaded(generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np").images
    np.testing.assert_allclose(got, expected, atol=1e-6)


# -- devices, dtypes, progress bars, attention ---------------------------------------------------


def test_to_forms_and_properties() -> None:
    pipe = make_pipe(extra=True)
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
    assert pipe.to("cpu", torch.float64) is pipe
    assert pipe.model.dtype == torch.float64 and pipe.extra.dtype == torch.float64  # type: ignore[union-attr]
    pipe.to(dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    pipe.to(torch.device("cpu"), dtype=torch.float32)
    assert pipe.dtype == torch.float32 and pipe.device == torch.device("cpu")
    with pytest.raises(TypeError, match="takes devices and dtypes"):
        pipe.to(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="two dtypes"):
        pipe.to(torch.float16, dtype=torch.float32)


def test_half_precision_to_cpu_warns_unless_silenced() -> None:
    pipe = make_pipe().to(torch.float16)
    with pytest.warns(UserWarning, match="model are float16 on the CPU"):
        pipe.to("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.to("cpu", silence_dtype_warnings=True)
        make_pipe().to("cpu")


def test_progress_bar_config() -> None:
    pipe = make_pipe()
    out = io.StringIO()
    pipe.set_progress_bar_config(desc="denoise", file=out)
    assert list(pipe.progress_bar(range(3))) == [0, 1, 2]
    assert "denoise" in out.getvalue() and "3/3" in out.getvalue()
    assert pipe.progress_bar(total=5).total == 5
    pipe.set_progress_bar_config(disable=True)
    assert pipe.progress_bar(range(2)).disable
    with pytest.raises(ValueError, match="needs iterable= or total="):
        pipe.progress_bar()


def test_set_attention_backend_reaches_every_model() -> None:
    pipe = make_pipe(extra=True)
    pipe.set_attention_backend("reference")
    assert pipe.model.attn.attention_backend == "reference"
    assert pipe.extra.attn.attention_backend == "reference"  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="unknown attention backend 'nope'"):
        pipe.set_attention_backend("nope")


def test_call_is_wrapped_in_no_grad_for_subclasses_of_subclasses() -> None:
    class Deeper(TinyPipeline):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            return torch.is_grad_enabled(), self.model(torch.ones(1, 3, 4, 4), torch.tensor(1))

    torch.manual_seed(0)
    pipe = Deeper(TinyModel(), TinyScheduler())
    enabled, out = pipe()
    assert enabled is False and out.grad_fn is None
    assert Deeper.config_value_names() == ("gain",)


# -- image helpers against diffusers' -------------------------------------------------------------


def test_image_helpers_match_diffusers() -> None:
    import diffusers
    from diffusers.image_processor import VaeImageProcessor

    gen = torch.Generator().manual_seed(0)
    decoded = torch.randn(2, 3, 5, 4, generator=gen) * 1.2
    processor = VaeImageProcessor()
    np.testing.assert_allclose(postprocess(decoded, "np"), processor.postprocess(decoded, output_type="np"))
    torch.testing.assert_close(postprocess(decoded, "pt"), processor.postprocess(decoded, output_type="pt"))
    for ours, theirs in zip(postprocess(decoded, "pil"), processor.postprocess(decoded, output_type="pil")):
        assert ours.mode == theirs.mode and ours.tobytes() == theirs.tobytes()
    pixels = torch.rand(2, 3, 5, 4, generator=gen)
    np.testing.assert_array_equal(pt_to_numpy(pixels), VaeImageProcessor.pt_to_numpy(pixels))
    array = np.random.default_rng(0).random((2, 5, 4, 3))
    for ours, theirs in zip(DiffusionPipeline.numpy_to_pil(array), diffusers.DiffusionPipeline.numpy_to_pil(array)):
        assert ours.tobytes() == theirs.tobytes()
    grey = numpy_to_pil(np.full((3, 2, 1), 0.5))
    assert grey[0].mode == "L" and set(np.asarray(grey[0]).ravel().tolist()) == {128}


def test_transformers_component_entry(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPTextConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    torch.manual_seed(0)
    encoder = transformers.CLIPTextModel(config)
    use_plugins(("ddpm", DDPMStandIn()))
    UncondPipeline(unet=encoder, scheduler=TinyScheduler()).save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["unet"] == ["transformers", "CLIPTextModel"]
    assert (tmp_path / "p" / "unet" / "model.safetensors").is_file()

    class Bridge:
        @hookimpl
        def difflux_load_component(self, library: str, class_name: str, folder: Path, options: LoadOptions) -> Any:
            return getattr(transformers, class_name).from_pretrained(folder) if library == "transformers" else None

    use_plugins(("ddpm", DDPMStandIn()), ("bridge", Bridge()))
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert type(pipe.unet) is transformers.CLIPTextModel
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(pipe.unet.state_dict()[key], value)
    assert pipe.to(torch.float64).unet.dtype == torch.float64
