"""ModelMixin: Diffusers-format from_pretrained / save_pretrained, checked against diffusers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import difflux.modeling as modeling
import pytest
import torch
from difflux import hookimpl
from difflux.errors import ConfigError, LoadError
from difflux.modeling import ModelMixin, parameters_on_meta
from difflux.options import LoadOptions
from difflux.registry import reset_registry
from difflux.serialization import index_file_name, weights_file_name
from difflux.testing import ComponentConformance
from safetensors.torch import load_file, save_file


class TinyAttention(torch.nn.Module):
    attention_backend: str | None = None

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_q = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_q(x)


class TinyNet(ModelMixin):
    """conv + norm (kept in fp32) + attention-ish linear + projection + a non-persistent buffer."""

    _keep_in_fp32_modules = ("norm",)

    def __init__(self, in_channels: int = 3, channels: int = 4, hidden: int = 6, out_scale: float = 1.0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, channels, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, channels)
        self.attn = TinyAttention(channels)
        self.proj = torch.nn.Linear(channels, hidden)
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, -2.0, hidden)), persistent=False)
        self.register_buffer("steps", torch.arange(3), persistent=True)
        self.out_scale = out_scale

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(sample).float()).to(sample.dtype).mean((2, 3))
        return self.proj(self.attn(h)) * self.freqs * self.out_scale + self.steps.sum()


class TiedNet(ModelMixin):
    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.a = torch.nn.Linear(dim, dim)
        self.b = torch.nn.Linear(dim, dim)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def _tiny(seed: int = 0, **kwargs: Any) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kwargs).eval()


def _inputs() -> dict[str, torch.Tensor]:
    return {"sample": torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class TestTinyNetConformance(ComponentConformance):
    component_class = TinyNet

    def make_component(self) -> ModelMixin:
        return _tiny()

    def make_inputs(self) -> dict[str, Any]:
        return _inputs()


# -- low-memory loading ---------------------------------------------------------------------------


def test_low_cpu_mem_usage_initialises_parameters_on_meta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny().save_pretrained(tmp_path)
    seen: list[torch.device] = []
    real_kaiming = torch.nn.init.kaiming_uniform_

    def spy(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(tensor.device)
        return real_kaiming(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "kaiming_uniform_", spy)
    model = TinyNet.from_pretrained(tmp_path)
    assert seen and {d.type for d in seen} == {"meta"}  # conv, linear weights were never initialised for real
    assert all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))
    # the non-persistent buffer is computed, not loaded, and right
    torch.testing.assert_close(model.freqs, torch.exp(torch.linspace(0.0, -2.0, 6)), atol=0, rtol=0)
    seen.clear()
    TinyNet.from_pretrained(tmp_path, low_cpu_mem_usage=False)
    assert {d.type for d in seen} == {"cpu"}


def test_parameters_on_meta_is_scoped() -> None:
    with parameters_on_meta():
        inside = torch.nn.Linear(2, 2)
    outside = torch.nn.Linear(2, 2)
    assert inside.weight.device.type == "meta"
    assert outside.weight.device.type == "cpu"
    assert torch.nn.Module.register_parameter is modeling._original_register_parameter


def test_meta_and_eager_loading_agree(tmp_path: Path) -> None:
    model = _tiny()
    model.save_pretrained(tmp_path, max_shard_size=200)
    a = TinyNet.from_pretrained(tmp_path)
    b = TinyNet.from_pretrained(tmp_path, low_cpu_mem_usage=False)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert torch.equal(a.freqs, b.freqs)
    torch.testing.assert_close(a(**_inputs()), model(**_inputs()), atol=0, rtol=0)


# -- dtypes and devices ---------------------------------------------------------------------------


def test_torch_dtype_and_keep_in_fp32(tmp_path: Path) -> None:
    _tiny().save_pretrained(tmp_path)
    model = TinyNet.from_pretrained(tmp_path, torch_dtype="fp16")
    assert model.dtype == torch.float16
    assert model.conv.weight.dtype == torch.float16
    assert model.norm.weight.dtype == torch.float32  # _keep_in_fp32_modules
    assert model.freqs.dtype == torch.float16  # buffers follow the dtype
    assert model.steps.dtype == torch.int64  # integer tensors keep theirs
    eager = TinyNet.from_pretrained(tmp_path, torch_dtype=torch.float16, low_cpu_mem_usage=False)
    assert {k: v.dtype for k, v in eager.state_dict().items()} == {k: v.dtype for k, v in model.state_dict().items()}


def test_half_checkpoint_loads_in_model_dtype_by_default(tmp_path: Path) -> None:
    model = _tiny()
    model.to(torch.float16).save_pretrained(tmp_path)
    loaded = TinyNet.from_pretrained(tmp_path)
    assert loaded.conv.weight.dtype == torch.float32  # like diffusers: the dtype the model is built in
    auto = TinyNet.from_pretrained(tmp_path, torch_dtype="auto")
    assert auto.conv.weight.dtype == torch.float16  # "auto": the file's dtype
    assert auto.freqs.dtype == torch.float16


def test_bad_dtype_string(tmp_path: Path) -> None:
    _tiny().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="flaot16"):
        TinyNet.from_pretrained(tmp_path, torch_dtype="flaot16")
    with pytest.raises(ConfigError, match="int8"):
        TinyNet.from_pretrained(tmp_path, torch_dtype="int8")


@pytest.mark.parametrize("device_map", ["cpu", {"": "cpu"}, "auto", torch.device("cpu")])
def test_device_map(tmp_path: Path, device_map: Any) -> None:
    _tiny().save_pretrained(tmp_path)
    model = TinyNet.from_pretrained(tmp_path, device_map=device_map)
    expected = modeling.resolve_device(device_map)
    assert model.device == expected
    assert all(t.device == expected for t in (*model.parameters(), *model.buffers()))


def test_bad_device_map(tmp_path: Path) -> None:
    _tiny().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no module called"):  # per-module maps: see test_device_maps.py
        TinyNet.from_pretrained(tmp_path, device_map={"conv": "cpu", "nonexistent": "cpu"})
    with pytest.raises(ConfigError, match="does not name a device"):
        TinyNet.from_pretrained(tmp_path, device_map="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            TinyNet.from_pretrained(tmp_path, device_map="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_straight_to_cuda(tmp_path: Path) -> None:
    model = _tiny()
    model.save_pretrained(tmp_path, max_shard_size=200)
    loaded = TinyNet.from_pretrained(tmp_path, device_map="cuda", torch_dtype=torch.float16)
    assert all(t.device.type == "cuda" for t in (*loaded.parameters(), *loaded.buffers()))
    assert loaded.norm.weight.dtype == torch.float32
    out = loaded(sample=_inputs()["sample"].cuda().half())
    torch.testing.assert_close(out.float().cpu(), model(**_inputs()), atol=2e-2, rtol=2e-2)


# -- kwargs and options ---------------------------------------------------------------------------


def test_kwargs_override_config(tmp_path: Path) -> None:
    model = _tiny()
    model.save_pretrained(tmp_path)
    loaded = TinyNet.from_pretrained(tmp_path, out_scale=2.0)
    assert loaded.config.out_scale == 2.0
    torch.testing.assert_close(loaded(**_inputs()) - 3, 2 * (model(**_inputs()) - 3))


class _Resolver:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.seen: list[LoadOptions] = []

    @hookimpl
    def difflux_resolve_pretrained(self, name_or_path: str, options: LoadOptions) -> Path | None:
        if name_or_path != "org/tiny":
            return None
        self.seen.append(options)
        return self.folder


@pytest.fixture
def resolver(tmp_path: Path) -> Iterator[_Resolver]:
    plugin = _Resolver(tmp_path / "repo")
    reset_registry([("test-resolver", plugin)])
    try:
        yield plugin
    finally:
        reset_registry()


def test_repo_ids_go_through_the_resolver(resolver: _Resolver) -> None:
    model = _tiny()
    model.save_pretrained(resolver.folder / "unet", variant="fp16")
    loaded = TinyNet.from_pretrained("org/tiny", subfolder="unet", variant="fp16", revision="abc", cache_dir="/c")
    assert torch.equal(loaded.proj.weight, model.proj.weight)
    (options,) = resolver.seen
    assert (options.revision, options.cache_dir, options.subfolder, options.variant) == ("abc", "/c", "unet", "fp16")
    assert "revision" not in loaded.config


def test_options_object_and_from_folder(tmp_path: Path) -> None:
    model = _tiny()
    model.save_pretrained(tmp_path / "unet", variant="fp16")
    opts = LoadOptions(variant="fp16", torch_dtype={"unet": torch.bfloat16, "default": torch.float16})
    loaded = TinyNet._from_folder(tmp_path / "unet", opts, component="unet", overrides={"out_scale": 3.0})
    assert loaded.dtype == torch.bfloat16 and loaded.config.out_scale == 3.0
    # through from_pretrained: named arguments win over the options object
    via = TinyNet.from_pretrained(tmp_path, options=opts, subfolder="unet", torch_dtype=torch.float32)
    assert via.dtype == torch.float32
    model2, info = TinyNet._from_folder(tmp_path / "unet", opts.replace(output_loading_info=True))
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    assert model2.dtype == torch.float16


# -- errors ---------------------------------------------------------------------------------------


def test_unexpected_and_mis_shaped_keys(tmp_path: Path) -> None:
    _tiny().save_pretrained(tmp_path)
    path = tmp_path / weights_file_name()
    tensors = load_file(str(path))
    tensors["extra.weight"] = torch.zeros(2)
    tensors["proj.weight"] = torch.zeros(7, 4)
    save_file(tensors, str(path))
    with pytest.raises(LoadError) as err:
        TinyNet.from_pretrained(tmp_path)
    message = str(err.value)
    assert "extra.weight" in message and "'proj.weight'" in message
    assert "(7, 4)" in message and "(6, 4)" in message and str(path) in message
    model, info = TinyNet.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == ["extra.weight"]
    assert info["mismatched_keys"] == [("proj.weight", (7, 4), (6, 4))]
    assert info["missing_keys"] == []
    assert len(info["error_msgs"]) == 2
    assert model.proj.weight.device.type == "cpu" and model.proj.weight.shape == (6, 4)


def test_missing_keys_are_initialised_not_meta(tmp_path: Path) -> None:
    _tiny().save_pretrained(tmp_path)
    path = tmp_path / weights_file_name()
    tensors = load_file(str(path))
    del tensors["conv.weight"], tensors["steps"]
    save_file(tensors, str(path))
    with pytest.raises(LoadError, match=r"conv\.weight.*steps|steps.*conv\.weight"):
        TinyNet.from_pretrained(tmp_path)
    model, info = TinyNet.from_pretrained(tmp_path, output_loading_info=True, torch_dtype=torch.float16)
    assert sorted(info["missing_keys"]) == ["conv.weight", "steps"]
    assert model.conv.weight.device.type == "cpu" and model.conv.weight.dtype == torch.float16
    assert model.conv.weight.float().std() > 0
    assert torch.equal(model.steps, torch.arange(3))


def test_malformed_config(tmp_path: Path) -> None:
    _tiny().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"channels": 4,')
    with pytest.raises(ConfigError, match=r"config\.json"):
        TinyNet.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"channels": "many"}))
    with pytest.raises(ConfigError, match="channels"):
        TinyNet.from_pretrained(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="not an existing local folder"):
        TinyNet.from_pretrained(tmp_path / "nope")


def test_pickle_only_with_opt_in(tmp_path: Path) -> None:
    model = _tiny()
    model.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(LoadError, match="use_safetensors=False"):
        TinyNet.from_pretrained(tmp_path)
    loaded = TinyNet.from_pretrained(tmp_path, use_safetensors=False)
    assert torch.equal(loaded.conv.weight, model.conv.weight)


# -- saving ---------------------------------------------------------------------------------------


def test_error_mid_save_leaves_folder_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "model"
    _tiny().save_pretrained(folder, max_shard_size=200)
    (folder / "README.md").write_text("mine")
    before = _snapshot(folder)

    def failing(state: dict[str, torch.Tensor], tmp: Path, **kwargs: Any) -> None:
        save_file({"x": torch.zeros(1)}, str(Path(tmp) / weights_file_name()))
        raise OSError("disk full")

    monkeypatch.setattr(modeling, "save_state_dict", failing)
    with pytest.raises(OSError, match="disk full"):
        _tiny(seed=5).save_pretrained(folder)
    assert _snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_resave_replaces_stale_weights_and_keeps_other_files(tmp_path: Path) -> None:
    _tiny().save_pretrained(tmp_path, max_shard_size=200)
    assert (tmp_path / index_file_name()).is_file()
    (tmp_path / "README.md").write_text("mine")
    new = _tiny(seed=7)
    new.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", weights_file_name()]
    assert torch.equal(TinyNet.from_pretrained(tmp_path).conv.weight, new.conv.weight)


def test_not_main_process_writes_nothing(tmp_path: Path) -> None:
    _tiny().save_pretrained(tmp_path / "m", is_main_process=False)
    assert not (tmp_path / "m").exists()


def test_tied_weights_save_and_stay_tied(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TiedNet()
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / weights_file_name()))
    assert torch.equal(saved["a.weight"], saved["b.weight"])
    for low in (True, False):
        loaded = TiedNet.from_pretrained(tmp_path, low_cpu_mem_usage=low)
        assert loaded.a.weight is loaded.b.weight
        x = torch.randn(2, 4)
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    # a checkpoint that stores the tied tensor once still loads (the alias is covered)
    del saved["b.weight"]
    save_file(saved, str(tmp_path / weights_file_name()))
    assert TiedNet.from_pretrained(tmp_path).b.weight is not None


# -- properties and switches ----------------------------------------------------------------------


def test_properties() -> None:
    model = _tiny()
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    expected = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == expected
    model.proj.requires_grad_(False)
    assert model.num_parameters(only_trainable=True) == expected - 6 * 4 - 6
    torch.manual_seed(0)
    assert TiedNet().num_parameters() == 16 + 4 + 4  # the tied weight counts once


def test_set_attention_backend() -> None:
    model = _tiny()
    model.set_attention_backend("reference")
    assert model.attn.attention_backend == "reference"
    assert not hasattr(model.conv, "attention_backend")
    with pytest.raises(ConfigError, match="reference"):
        model.set_attention_backend("no-such-backend")
    assert model.attn.attention_backend == "reference"
    model.set_attention_backend(None)
    assert model.attn.attention_backend is None


# -- interop with diffusers -----------------------------------------------------------------------


def _diffusers_twin() -> type:
    diffusers = pytest.importorskip("diffusers")
    from diffusers.configuration_utils import ConfigMixin, register_to_config

    class TinyNet(diffusers.ModelMixin, ConfigMixin):  # same name, keys and layout as ours
        _keep_in_fp32_modules = ["norm"]

        @register_to_config
        def __init__(self, in_channels: int = 3, channels: int = 4, hidden: int = 6, out_scale: float = 1.0) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, channels, 3, padding=1)
            self.norm = torch.nn.GroupNorm(2, channels)
            self.attn = TinyAttention(channels)
            self.proj = torch.nn.Linear(channels, hidden)
            self.register_buffer("freqs", torch.exp(torch.linspace(0.0, -2.0, hidden)), persistent=False)
            self.register_buffer("steps", torch.arange(3), persistent=True)
            self.out_scale = out_scale

        def forward(self, sample: torch.Tensor) -> torch.Tensor:
            h = self.norm(self.conv(sample).float()).to(sample.dtype).mean((2, 3))
            return self.proj(self.attn(h)) * self.freqs * self.out_scale + self.steps.sum()

    return TinyNet


def test_diffusers_reads_our_sharded_variant_folder(tmp_path: Path) -> None:
    twin = _diffusers_twin()
    ours = _tiny()
    ours.save_pretrained(tmp_path / "ours", max_shard_size=200, variant="fp16")
    theirs = twin.from_pretrained(tmp_path / "ours", variant="fp16")
    for key, value in ours.state_dict().items():
        assert torch.equal(theirs.state_dict()[key], value), key
    torch.testing.assert_close(theirs(**_inputs()), ours(**_inputs()), atol=0, rtol=0)
    # and diffusers, given the same tensors and limits, writes the same files and index
    theirs.save_pretrained(tmp_path / "theirs", max_shard_size=200, variant="fp16")
    names = sorted(os.listdir(tmp_path / "ours"))
    assert names == sorted(os.listdir(tmp_path / "theirs"))
    index = index_file_name(variant="fp16")
    assert json.loads((tmp_path / "ours" / index).read_text()) == json.loads((tmp_path / "theirs" / index).read_text())
    for name in names:
        if name.endswith(".safetensors"):
            a, b = load_file(str(tmp_path / "ours" / name)), load_file(str(tmp_path / "theirs" / name))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["_class_name"] == "TinyNet" and config["channels"] == 4


@pytest.mark.parametrize("kwargs", [{}, {"max_shard_size": "1KB", "variant": "fp16"}, {"safe_serialization": False}])
def test_we_read_diffusers_folders(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    twin = _diffusers_twin()
    torch.manual_seed(3)
    theirs = twin().eval()
    theirs.save_pretrained(tmp_path, **kwargs)
    load_kwargs: dict[str, Any] = {}
    if "variant" in kwargs:
        load_kwargs["variant"] = kwargs["variant"]
    if kwargs.get("safe_serialization") is False:
        load_kwargs["use_safetensors"] = False
    ours = TinyNet.from_pretrained(tmp_path, **load_kwargs)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    torch.testing.assert_close(ours(**_inputs()), theirs(**_inputs()), atol=0, rtol=0)
    # same dtype handling as diffusers with keep-in-fp32 modules
    half_theirs = twin.from_pretrained(tmp_path, torch_dtype=torch.float16, **load_kwargs)
    half_ours = TinyNet.from_pretrained(tmp_path, torch_dtype=torch.float16, **load_kwargs)
    assert {k: v.dtype for k, v in half_ours.state_dict().items()} == {
        k: v.dtype for k, v in half_theirs.state_dict().items()
    }
