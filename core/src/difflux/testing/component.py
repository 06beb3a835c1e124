"""Conformance kit for models: subclass :class:`ComponentConformance` in a plugin's tests.

::

    class TestMyUNet(ComponentConformance):
        component_class = MyUNet

        def make_component(self) -> MyUNet:
            torch.manual_seed(0)
            return MyUNet(block_out_channels=(4, 8), norm_num_groups=2)

        def make_inputs(self) -> dict[str, Any]:
            g = torch.Generator().manual_seed(0)
            return {"sample": torch.randn(1, 4, 8, 8, generator=g), "timestep": 3}

The kit checks the Diffusers-format contract of :class:`difflux.ModelMixin`: config and
weights round trips (plain, variant, sharded, low-memory and not), dtypes on load, and clear
errors for broken checkpoints. Numerical parity with ``diffusers`` belongs in the plugin's own
tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from ..errors import LoadError
from ..modeling import ModelMixin
from ..outputs import BaseOutput
from ..serialization import index_file_name, load_weights_file, weights_file_name

__all__ = ["ComponentConformance"]


class ComponentConformance:
    """Base test class (no ``Test`` prefix, so pytest collects only subclasses)."""

    #: the model class under test
    component_class: ClassVar[type[ModelMixin]]
    #: tolerance when comparing forward outputs of a model and its reloaded copy
    atol: ClassVar[float] = 0.0

    # -- hooks a subclass implements / may override --------------------------------------------

    def make_component(self) -> ModelMixin:
        """A tiny model, seeded so two calls give the same weights."""
        raise TypeError(f"{type(self).__name__} must define make_component()")

    def make_inputs(self) -> dict[str, Any]:
        """Keyword arguments for ``forward`` (seeded)."""
        raise TypeError(f"{type(self).__name__} must define make_inputs()")

    def output_tensor(self, out: Any) -> torch.Tensor:
        """The tensor to compare from ``forward``'s result."""
        if isinstance(out, torch.Tensor):
            return out
        if isinstance(out, BaseOutput):
            first = out.to_tuple()[0]
            assert isinstance(first, torch.Tensor)
            return first
        if isinstance(out, (tuple, list)):
            first = out[0]
            assert isinstance(first, torch.Tensor)
            return first
        raise TypeError(f"override output_tensor(): cannot find a tensor in {type(out).__name__}")

    # -- helpers ---------------------------------------------------------------------------------

    def _forward(self, model: ModelMixin, dtype: torch.dtype | None = None) -> torch.Tensor:
        inputs = self.make_inputs()
        if dtype is not None:
            inputs = {
                k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in inputs.items()
            }
        with torch.no_grad():
            return self.output_tensor(model(**inputs))

    @staticmethod
    def _assert_same_state(a: ModelMixin, b: ModelMixin) -> None:
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb)
        for key in sa:
            assert sa[key].dtype == sb[key].dtype, key
            assert torch.equal(sa[key], sb[key]), key

    def _saved(self, tmp_path: Path, **save_kwargs: Any) -> tuple[ModelMixin, Path]:
        model = self.make_component().eval()
        folder = tmp_path / "model"
        model.save_pretrained(folder, **save_kwargs)
        return model, folder

    # -- the checks ------------------------------------------------------------------------------

    def test_config_round_trip(self, tmp_path: Path) -> None:
        model = self.make_component()
        path = model.save_config(tmp_path)
        written = json.loads(path.read_text())
        assert written["_class_name"] == type(model).__name__
        rebuilt = self.component_class.from_config(self.component_class.load_config(tmp_path))
        assert dict(rebuilt.config) == dict(model.config)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes

    @pytest.mark.parametrize("low_cpu_mem_usage", [True, False], ids=["meta", "eager"])
    def test_save_load_round_trip(self, tmp_path: Path, low_cpu_mem_usage: bool) -> None:
        model, folder = self._saved(tmp_path)
        assert (folder / "config.json").is_file()
        assert (folder / weights_file_name()).is_file()
        loaded = self.component_class.from_pretrained(folder, low_cpu_mem_usage=low_cpu_mem_usage)
        assert isinstance(loaded, self.component_class)
        assert not loaded.training
        self._assert_same_state(model, loaded)
        for name, tensor in (*loaded.named_parameters(), *loaded.named_buffers()):
            assert tensor.device.type == "cpu", name
        torch.testing.assert_close(self._forward(loaded), self._forward(model), atol=self.atol, rtol=0)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
    def test_load_in_dtype(self, tmp_path: Path, dtype: torch.dtype) -> None:
        model, folder = self._saved(tmp_path)
        loaded = self.component_class.from_pretrained(folder, torch_dtype=dtype)
        keep = tuple(self.component_class._keep_in_fp32_modules)
        assert loaded.dtype == dtype
        reference = model.state_dict()
        for name, tensor in loaded.state_dict().items():
            if not tensor.is_floating_point():
                continue
            kept = any(f".{m}." in f".{name}." for m in keep)
            assert tensor.dtype == (torch.float32 if kept else dtype), name
            torch.testing.assert_close(tensor, reference[name].to(tensor.dtype), atol=0, rtol=0)

    def test_variant_round_trip(self, tmp_path: Path) -> None:
        model, folder = self._saved(tmp_path, variant="fp16")
        assert (folder / weights_file_name(variant="fp16")).is_file()
        assert not (folder / weights_file_name()).exists()
        with pytest.raises(LoadError, match="fp16"):
            self.component_class.from_pretrained(folder)
        loaded = self.component_class.from_pretrained(folder, variant="fp16")
        self._assert_same_state(model, loaded)

    def test_sharded_round_trip(self, tmp_path: Path) -> None:
        model = self.make_component().eval()
        sizes = [t.numel() * t.element_size() for t in model.state_dict().values()]
        folder = tmp_path / "model"
        model.save_pretrained(folder, max_shard_size=max(sizes))
        index_path = folder / index_file_name()
        index = json.loads(index_path.read_text())
        files = sorted(set(index["weight_map"].values()))
        assert len(files) > 1
        assert sorted(p.name for p in folder.glob("*.safetensors")) == files
        assert set(index["weight_map"]) == set(model.state_dict())
        assert index["metadata"]["total_size"] == sum(sizes)
        for name in files:
            keys = set(load_weights_file(folder / name))
            assert keys == {k for k, v in index["weight_map"].items() if v == name}
        loaded = self.component_class.from_pretrained(folder)
        self._assert_same_state(model, loaded)
        torch.testing.assert_close(self._forward(loaded), self._forward(model), atol=self.atol, rtol=0)

    def _rewrite_weights(self, folder: Path, edit: Any) -> str:
        from safetensors.torch import save_file

        path = folder / weights_file_name()
        tensors = load_weights_file(path)
        key = next(k for k, v in tensors.items() if v.is_floating_point() and v.dim() >= 1)
        edit(tensors, key)
        save_file(tensors, str(path), metadata={"format": "pt"})
        return key

    def test_missing_key_raises(self, tmp_path: Path) -> None:
        _, folder = self._saved(tmp_path)
        key = self._rewrite_weights(folder, lambda t, k: t.pop(k))
        with pytest.raises(LoadError) as err:
            self.component_class.from_pretrained(folder)
        assert key in str(err.value)
        model, info = self.component_class.from_pretrained(folder, output_loading_info=True)
        assert info["missing_keys"] == [key]
        assert model.state_dict()[key].device.type == "cpu"

    def test_mis_shaped_key_raises(self, tmp_path: Path) -> None:
        _, folder = self._saved(tmp_path)

        def grow(tensors: dict[str, torch.Tensor], key: str) -> None:
            t = tensors[key]
            tensors[key] = torch.zeros((t.shape[0] + 1, *t.shape[1:]), dtype=t.dtype)

        key = self._rewrite_weights(folder, grow)
        with pytest.raises(LoadError) as err:
            self.component_class.from_pretrained(folder)
        message = str(err.value)
        assert key in message
        assert weights_file_name() in message
        expected = tuple(self.make_component().state_dict()[key].shape)
        assert str(expected) in message
