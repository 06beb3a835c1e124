"""Every pipeline the installed difflux plugins register declares the order its models run in."""

from __future__ import annotations

import pytest
from difflux import DiffusionPipeline
from difflux.registry import get_registry


def _pipelines() -> list[tuple[str, type]]:
    registry = get_registry()
    found: dict[type, str] = {}
    for name in sorted(registry.pipelines):
        cls = registry.pipeline_class(name)
        if isinstance(cls, type) and issubclass(cls, DiffusionPipeline):
            found.setdefault(cls, name)
    return [(name, cls) for cls, name in found.items()]


PIPELINES = _pipelines()


def test_there_are_pipelines_to_check() -> None:
    names = {name for name, _ in PIPELINES}
    assert {"StableDiffusionPipeline", "DDPMPipeline"} <= names


@pytest.mark.parametrize(("name", "cls"), PIPELINES, ids=[n for n, _ in PIPELINES])
def test_model_cpu_offload_seq_names_components(name: str, cls: type[DiffusionPipeline]) -> None:
    seq = cls.model_cpu_offload_seq
    assert seq, f"{name} declares no model_cpu_offload_seq"
    parts = seq.split("->")
    assert len(parts) == len(set(parts)), f"{name}: {seq!r} names a component twice"
    unknown = set(parts) - set(cls.component_names())
    assert not unknown, f"{name}: {seq!r} names {unknown}, not components of the class"
    assert set(cls._exclude_from_cpu_offload) <= set(cls.component_names()) | {"safety_checker"}
