"""The pipeline conformance kit: a pytest base class that pipeline plugins' test suites subclass.

::

    from difflux.testing import PipelineConformance

    class TestMyPipeline(PipelineConformance):
        pipeline_class = MyPipeline

        def make_components(self) -> dict[str, Any]:
            torch.manual_seed(0)
            return {"unet": TinyUNet(...), "scheduler": MyScheduler()}

        def make_inputs(self, seed: int) -> dict[str, Any]:
            return {"generator": torch.Generator().manual_seed(seed), "num_inference_steps": 2,
                    "output_type": "np"}

The classes the pipeline loads must be registered (the plugin under test is installed, or the
suite registers a throwaway plugin with :func:`difflux.registry.reset_registry`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import read_json
from ..pipeline import DiffusionPipeline
from ..registry import get_registry

__all__ = ["PipelineConformance"]


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside an output (dataclass, mapping, sequence or tensor)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _tensors(getattr(value, field.name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


class PipelineConformance:
    """What every ``DiffusionPipeline`` must do; subclass it in a ``Test*`` class."""

    #: The pipeline under test.
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    #: Largest difference allowed between outputs that must be equal.
    atol: ClassVar[float] = 1e-5
    #: The dtype :meth:`test_to_dtype_moves_every_module` moves to.
    other_dtype: ClassVar[torch.dtype] = torch.float64

    # -- what a suite provides ------------------------------------------------------------------

    def make_components(self) -> dict[str, Any]:
        """Tiny components, built from a fixed seed (the same on every call)."""
        raise TypeError(f"{type(self).__name__} must define make_components()")

    def make_inputs(self, seed: int) -> dict[str, Any]:
        """``__call__`` keyword arguments whose randomness comes from ``seed``."""
        raise TypeError(f"{type(self).__name__} must define make_inputs(seed)")

    def output_array(self, result: Any) -> np.ndarray:
        """The output as one float64 array (default: ``images`` or the first item, made numeric)."""
        value = getattr(result, "images", None)
        if value is None:
            value = result[0]
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().double().numpy()
        if isinstance(value, list) and value and not isinstance(value[0], (np.ndarray, torch.Tensor)):
            return np.stack([np.asarray(v, dtype=np.float64) for v in value])  # PIL images
        if isinstance(value, list):
            return np.stack([np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v) for v in value])
        return np.asarray(value, dtype=np.float64)

    # -- helpers --------------------------------------------------------------------------------

    def make_pipeline(self) -> DiffusionPipeline:
        pipe = self.pipeline_class(**self.make_components())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def run(self, pipe: DiffusionPipeline, seed: int = 0) -> np.ndarray:
        return self.output_array(pipe(**self.make_inputs(seed)))

    def assert_close(self, a: np.ndarray, b: np.ndarray) -> None:
        assert a.shape == b.shape, f"output shapes differ: {a.shape} vs {b.shape}"
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        assert diff <= self.atol, f"outputs differ by {diff} (allowed {self.atol})"

    # -- the tests ------------------------------------------------------------------------------

    def test_save_load_round_trip(self, tmp_path: Path) -> None:
        pipe = self.make_pipeline()
        expected = self.run(pipe)
        pipe.save_pretrained(tmp_path / "saved")
        loaded = self.pipeline_class.from_pretrained(tmp_path / "saved")
        loaded.set_progress_bar_config(disable=True)
        assert type(loaded) is self.pipeline_class
        assert set(loaded.components) == set(pipe.components)
        for name, component in pipe.components.items():
            assert type(loaded.components[name]) is type(component), f"component {name!r} changed class"
        self.assert_close(self.run(loaded), expected)
        # and through the registry, by the name written into model_index.json
        generic = DiffusionPipeline.from_pretrained(tmp_path / "saved")
        assert type(generic) is self.pipeline_class

    def test_model_index_lists_every_component(self, tmp_path: Path) -> None:
        pipe = self.make_pipeline()
        pipe.save_pretrained(tmp_path / "saved")
        index = read_json(tmp_path / "saved" / "model_index.json")
        assert get_registry().pipeline_class(index["_class_name"]) is self.pipeline_class
        assert isinstance(index["_diffusers_version"], str)
        for name, component in pipe.components.items():
            entry = index.get(name)
            assert isinstance(entry, list) and len(entry) == 2, f"{name!r}: entry {entry!r}"
            if component is None:
                assert entry == [None, None]
            else:
                assert entry[1] is not None
                assert (tmp_path / "saved" / name).is_dir(), f"component {name!r} has no subfolder"
        for name in self.pipeline_class.component_names():
            assert name in index, f"model_index.json lacks the component {name!r}"

    def test_components_share_tensors(self) -> None:
        pipe = self.make_pipeline()
        other = self.pipeline_class(**pipe.components)
        assert set(other.components) == set(pipe.components)
        for name, component in pipe.components.items():
            assert other.components[name] is component, f"component {name!r} was copied"
            if isinstance(component, torch.nn.Module):
                mine = {k: v.data_ptr() for k, v in component.state_dict().items()}
                theirs = {k: v.data_ptr() for k, v in other.components[name].state_dict().items()}
                assert mine == theirs

    def test_same_seed_same_output(self) -> None:
        pipe = self.make_pipeline()
        first = self.run(pipe, seed=0)
        self.assert_close(self.run(pipe, seed=0), first)
        self.assert_close(self.run(self.make_pipeline(), seed=0), first)

    def test_different_seed_different_output(self) -> None:
        pipe = self.make_pipeline()
        a, b = self.run(pipe, seed=0), self.run(pipe, seed=1)
        assert a.shape == b.shape
        assert float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) > self.atol

    def test_to_dtype_moves_every_module(self) -> None:
        pipe = self.make_pipeline()
        modules = {n: c for n, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
        assert modules, "the pipeline has no torch module components"
        assert pipe.to(self.other_dtype) is pipe
        for name, module in modules.items():
            dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
            assert dtypes <= {self.other_dtype}, f"component {name!r} still has {dtypes}"
        assert pipe.dtype == self.other_dtype
        pipe.to(dtype=torch.float32)
        assert pipe.dtype == torch.float32

    def test_model_offload_gives_the_same_output(self) -> None:
        """``enable_model_cpu_offload`` (CPU as execution device): the declared sequence names
        components, exactly the running model is onloaded, the output is unchanged, and everything
        is offloaded again when the call ends."""
        from .. import offload

        expected = self.run(self.make_pipeline())
        pipe = self.make_pipeline()
        assert self.pipeline_class.model_cpu_offload_seq, "declare model_cpu_offload_seq on the class"
        pipe.enable_model_cpu_offload(device="cpu")
        state = offload.active(pipe)
        assert state is not None and pipe.device == torch.device("cpu")
        weights = state.handle.weights  # type: ignore[attr-defined]
        wrong: list[tuple[str, list[str]]] = []
        handles = []
        for name, module in pipe.components.items():
            leaves = [m for m in module.modules() if next(m.parameters(recurse=False), None) is not None] if (
                isinstance(module, torch.nn.Module) and name in weights
            ) else []
            if leaves:
                def probe(*_: Any, name: str = name) -> None:
                    onloaded = sorted(n for n, w in weights.items() if w.on is not None)
                    if onloaded != [name]:
                        wrong.append((name, onloaded))

                handles.append(leaves[-1].register_forward_pre_hook(probe))
        try:
            self.assert_close(self.run(pipe), expected)
        finally:
            for handle in handles:
                handle.remove()
        assert not wrong, f"models on the device while another ran: {wrong[:3]}"
        assert all(w.on is None for w in weights.values()), "a model stayed on the device after the call"
        pipe.remove_all_hooks()

    def test_call_runs_without_autograd(self) -> None:
        pipe = self.make_pipeline()
        grad_seen: list[bool] = []
        handles = []
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                handles.append(component.register_forward_hook(lambda *_: grad_seen.append(torch.is_grad_enabled())))
                for p in component.parameters():
                    if p.is_floating_point():
                        p.requires_grad_(True)
        try:
            with torch.enable_grad():
                result = pipe(**self.make_inputs(0))
        finally:
            for handle in handles:
                handle.remove()
        assert grad_seen, "no torch module component ran during __call__"
        assert not any(grad_seen), "a module ran with autograd enabled inside __call__"
        for tensor in _tensors(result):
            assert tensor.grad_fn is None and not tensor.requires_grad
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                assert all(p.grad is None for p in component.parameters())
