"""Conformance kits and pytest fixtures for plugin test suites (``pip install difflux[testing]``).

First-party and third-party plugins use the same kits::

    from difflux.testing import SchedulerConformance

    class TestMyScheduler(SchedulerConformance):
        scheduler_class = MyScheduler
        ...

| kit | for |
|---|---|
| :class:`ComponentConformance` | models (``ModelMixin`` subclasses) |
| :class:`SchedulerConformance` | schedulers |
| :class:`PipelineConformance` | pipelines |
| :class:`AttentionBackendConformance` | attention backends |

The fixture ``difflux_registry`` (module :mod:`difflux.testing.fixtures`, loaded by pytest
automatically through the ``pytest11`` entry point of ``difflux``) gives a test an isolated
plugin registry.

The kits are imported on first access, so importing this package (as pytest does for the
fixtures) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .attention import AttentionBackendConformance
    from .component import ComponentConformance
    from .fixtures import IsolatedRegistry
    from .pipeline import PipelineConformance
    from .scheduler import SchedulerConformance

__all__ = [
    "AttentionBackendConformance",
    "ComponentConformance",
    "IsolatedRegistry",
    "PipelineConformance",
    "SchedulerConformance",
]

_WHERE = {
    "AttentionBackendConformance": "attention",
    "ComponentConformance": "component",
    "IsolatedRegistry": "fixtures",
    "PipelineConformance": "pipeline",
    "SchedulerConformance": "scheduler",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
