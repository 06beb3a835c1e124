"""difflux plugin: unconditional and class-conditional pipelines, and the embedded default digits model.

Classes are imported on first attribute access, so ``import difflux_pipelines_unconditional``
stays cheap; ``difflux.DiffusionPipeline.from_pretrained(folder)`` is the usual way in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .default_model import default_model_path

if TYPE_CHECKING:
    from ._base import UNetSamplingPipeline as UNetSamplingPipeline

__all__ = [
    "ConsistencyModelPipeline",
    "DDIMPipeline",
    "DDPMPipeline",
    "DanceDiffusionPipeline",
    "DiTPipeline",
    "KarrasVePipeline",
    "LDMPipeline",
    "PNDMPipeline",
    "RePaintPipeline",
    "RePaintScheduler",
    "ScoreSdeVePipeline",
    "UNetSamplingPipeline",
    "default_model_path",
]


def __getattr__(name: str) -> Any:
    if name == "UNetSamplingPipeline":  # the shared base, public for families that build on it
        from ._base import UNetSamplingPipeline

        return UNetSamplingPipeline
    from .plugin import PIPELINES, SCHEDULERS

    for ref in (*PIPELINES, *SCHEDULERS):
        module, _, cls = ref.partition(":")
        if cls == name:
            value = getattr(importlib.import_module(module), name)
            globals()[name] = value
            return value
    raise AttributeError(f"module 'difflux_pipelines_unconditional' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
