"""difflux: Diffusers-format diffusion pipelines as a thin core plus installable plugins.

Models call attention through the module function ``difflux.attention.attention(q, k, v)``.

``import difflux`` is cheap: torch-backed names (``DiffusionPipeline``, ``ModelMixin``, ...)
are imported on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import ConfigMixin, FrozenConfig
from .errors import ConfigError, DiffluxError, LoadError, PluginConflictError, PluginError, UnknownClassError
from .hookspecs import hookimpl
from .options import LoadOptions
from .registry import get_registry

__version__ = "0.1.0"

_LAZY = {
    "DiffusionPipeline": "difflux.pipeline",
    "ImagePipelineOutput": "difflux.pipeline",
    "ModelMixin": "difflux.modeling",
    "SchedulerMixin": "difflux.schedulers",
    "SchedulerOutput": "difflux.schedulers",
    "BaseOutput": "difflux.outputs",
    "attention_backend": "difflux.attention",
    "set_attention_backend": "difflux.attention",
}

if TYPE_CHECKING:
    from .attention import attention_backend, set_attention_backend
    from .modeling import ModelMixin
    from .outputs import BaseOutput
    from .pipeline import DiffusionPipeline, ImagePipelineOutput
    from .schedulers import SchedulerMixin, SchedulerOutput

__all__ = [
    "BaseOutput",
    "ConfigError",
    "ConfigMixin",
    "DiffluxError",
    "DiffusionPipeline",
    "FrozenConfig",
    "ImagePipelineOutput",
    "LoadError",
    "LoadOptions",
    "ModelMixin",
    "PluginConflictError",
    "PluginError",
    "SchedulerMixin",
    "SchedulerOutput",
    "UnknownClassError",
    "__version__",
    "attention_backend",
    "get_registry",
    "hookimpl",
    "set_attention_backend",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
