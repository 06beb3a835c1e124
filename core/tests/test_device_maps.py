"""Device maps on a CPU machine: models split between ``cpu`` and ``disk`` (weights memory-mapped from
safetensors, loaded on use through accelerate's hooks), and pipelines placed by component size."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import difflux
import pytest
import torch
from difflux import DiffusionPipeline
from difflux.errors import ConfigError
from difflux.modeling import ModelMixin
from difflux.registry import reset_registry


class TinyNet(ModelMixin):
    def __init__(self, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(4, width)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(width, width) for _ in range(depth)])
        self.out = torch.nn.Linear(width, 4)
        self.register_buffer("scale", torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.out(x) * self.scale


class LegacyNet(TinyNet):
    """Checkpoints name ``out`` ``head``: loading converts the key, so disk weights must be rewritten."""

    @classmethod
    def _convert_checkpoint(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k.replace("head.", "out."): v for k, v in state_dict.items()}


X = torch.linspace(-1, 1, 8).reshape(2, 4)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyNet().eval()
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(folder)
    with torch.no_grad():
        return folder, model(X)


def _bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_auto_map_under_a_memory_limit_puts_the_rest_on_disk(saved: Any, tmp_path: Path) -> None:
    folder, expected = saved
    limit = 1500  # bytes: the input layer plus room accelerate keeps for the largest offloaded layer
    model = TinyNet.from_pretrained(folder, device_map="auto", max_memory={"cpu": limit}, offload_folder=tmp_path)
    placed = set(model.hf_device_map.values())
    assert placed == {"cpu", "disk"}
    on_cpu = sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type == "cpu")
    assert 0 < on_cpu <= limit
    assert any(p.device.type == "meta" for p in model.parameters())  # loaded on use, not held
    assert list(tmp_path.iterdir()) == []  # safetensors weights stay memory-mapped in the checkpoint
    with torch.no_grad():
        torch.testing.assert_close(model(X), expected, rtol=0, atol=0)
        torch.testing.assert_close(model(X), expected, rtol=0, atol=0)
    assert any(p.device.type == "meta" for p in model.parameters())


def test_dict_map_with_disk_and_a_dtype(saved: Any, tmp_path: Path) -> None:
    folder, expected = saved
    model = TinyNet.from_pretrained(
        folder, device_map={"inp": "cpu", "blocks": "disk", "out": "cpu"}, offload_folder=tmp_path,
        torch_dtype=torch.float64,
    )
    assert model.blocks[0].weight.device.type == "meta"
    assert model.inp.weight.dtype == torch.float64
    with torch.no_grad():
        out = model(X.double())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected.double(), rtol=1e-6, atol=1e-6)


def test_converted_weights_are_written_to_the_offload_folder(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TinyNet().eval()
    with torch.no_grad():
        expected = model(X)
    from difflux.serialization import save_state_dict

    folder = tmp_path / "legacy"
    folder.mkdir()
    model.save_config(folder)
    state = {k.replace("out.", "head."): v for k, v in model.state_dict().items()}
    save_state_dict(state, folder, prefix=LegacyNet.weights_name)
    offload = tmp_path / "offload"
    loaded = LegacyNet.from_pretrained(folder, device_map={"inp": "cpu", "blocks": "cpu", "out": "disk"},
                                       offload_folder=offload)
    written = sorted(p.name for p in offload.iterdir())
    assert written == ["diffusion_pytorch_model-offload-00000.safetensors"]
    from safetensors.torch import load_file

    assert set(load_file(offload / written[0])) == {"out.weight", "out.bias"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), expected, rtol=0, atol=0)


@pytest.mark.parametrize("per_tensor", [True, False])
def test_offload_state_dict_reads_tensor_by_tensor_or_by_shard(saved: Any, tmp_path: Path, per_tensor: bool) -> None:
    folder, expected = saved
    model = TinyNet.from_pretrained(
        folder, device_map={"": "cpu", "blocks.3": "disk"}, offload_folder=tmp_path, offload_state_dict=per_tensor
    )
    with torch.no_grad():
        torch.testing.assert_close(model(X), expected, rtol=0, atol=0)


def test_offload_on_a_split_component_is_refused(saved: Any, tmp_path: Path) -> None:
    folder, _ = saved

    class One(DiffusionPipeline):
        model_cpu_offload_seq = "net"

        def __init__(self, net: TinyNet) -> None:
            super().__init__()
            self.register_modules(net=net)

    split = TinyNet.from_pretrained(folder, device_map={"": "cpu", "blocks": "disk"}, offload_folder=tmp_path)
    with pytest.raises(ConfigError, match="component 'net' was loaded with a per-module device_map"):
        One(split).enable_model_cpu_offload(device="cpu")


def test_device_map_refusals(saved: Any, tmp_path: Path) -> None:
    folder, _ = saved
    with pytest.raises(ConfigError, match="offload_folder"):
        TinyNet.from_pretrained(folder, device_map={"": "cpu", "blocks": "disk"})
    with pytest.raises(ConfigError, match="no module called"):
        TinyNet.from_pretrained(folder, device_map={"inp": "cpu", "trunk": "disk"}, offload_folder=tmp_path)
    with pytest.raises(ConfigError, match="places no module holding the parameters out"):
        TinyNet.from_pretrained(folder, device_map={"inp": "cpu", "blocks": "cpu"}, offload_folder=tmp_path)
    with pytest.raises(ConfigError, match="'meta' holds no weights"):
        TinyNet.from_pretrained(folder, device_map={"": "meta", "blocks": "disk"}, offload_folder=tmp_path)
    with pytest.raises(ConfigError, match="is not a size"):
        TinyNet.from_pretrained(folder, device_map="auto", max_memory={"cpu": "lots"})


# -- pipelines: whole components by size ----------------------------------------------------------


class Small(TinyNet):
    pass


class Big(TinyNet):
    pass


class TwoModels(DiffusionPipeline):
    model_cpu_offload_seq = "small->big"

    def __init__(self, small: Small, big: Big) -> None:
        super().__init__()
        self.register_modules(small=small, big=big)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.big(self.small(x.to(self.device)))


@pytest.fixture
def two_models(tmp_path: Path) -> Iterator[tuple[Path, torch.Tensor]]:
    plugin = types.SimpleNamespace()

    @difflux.hookimpl
    def difflux_register_components(register: Any) -> None:
        register(Small)
        register(Big)

    @difflux.hookimpl
    def difflux_register_pipelines(register: Any) -> None:
        register(TwoModels)

    plugin.difflux_register_components = difflux_register_components
    plugin.difflux_register_pipelines = difflux_register_pipelines
    reset_registry([("two-models", plugin)])
    try:
        torch.manual_seed(0)
        pipe = TwoModels(Small(width=8), Big(width=32))
        folder = tmp_path / "pipe"
        pipe.save_pretrained(folder)
        yield folder, pipe(X)
    finally:
        reset_registry()


def test_balanced_map_places_components_by_size(two_models: Any, tmp_path: Path) -> None:
    folder, expected = two_models
    small_bytes = _bytes(Small(width=8))
    pipe = DiffusionPipeline.from_pretrained(
        folder, device_map="balanced", max_memory={"cpu": small_bytes + 10}, offload_folder=tmp_path / "off"
    )
    assert pipe.hf_device_map == {"big": "disk", "small": "cpu"}  # the big one did not fit under the limit
    assert pipe.big.blocks[0].weight.device.type == "meta"
    assert pipe.small.inp.weight.device.type == "cpu"
    assert pipe.device == torch.device("cpu")
    torch.testing.assert_close(pipe(X), expected, rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"reset_device_map\(\)"):
        pipe.to("cpu")
    with pytest.raises(ConfigError, match=r"reset_device_map\(\)"):
        pipe.enable_model_cpu_offload(device="cpu")
    pipe.reset_device_map()
    assert getattr(pipe, "hf_device_map", None) is None
    assert all(p.device.type == "cpu" for _, m in pipe._torch_modules() for p in m.parameters())
    torch.testing.assert_close(pipe(X), expected, rtol=0, atol=0)
    pipe.enable_model_cpu_offload(device="cpu")  # allowed once the map is gone
    torch.testing.assert_close(pipe(X), expected, rtol=0, atol=0)


def test_balanced_map_refusals(two_models: Any) -> None:
    folder, _ = two_models
    with pytest.raises(ConfigError, match=r"component 'big' needs .* or pass offload_folder="):
        DiffusionPipeline.from_pretrained(folder, device_map="balanced", max_memory={"cpu": 100})
    with pytest.raises(ConfigError, match="use 'balanced'"):
        DiffusionPipeline.from_pretrained(folder, device_map="sequential")


def test_auto_dtype_keeps_the_checkpoint_dtype(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet().eval().half()
    model.save_pretrained(tmp_path / "half")
    loaded = TinyNet.from_pretrained(
        tmp_path / "half", torch_dtype="auto", device_map={"": "cpu", "blocks": "disk"}, offload_folder=tmp_path / "o"
    )
    assert loaded.inp.weight.dtype == torch.float16
    with torch.no_grad():
        torch.testing.assert_close(loaded(X.half()), model(X.half()), rtol=0, atol=0)
