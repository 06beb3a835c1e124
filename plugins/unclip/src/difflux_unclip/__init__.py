"""difflux-unclip: unCLIP (Karlo) pipelines.

Importing the package is cheap; the classes load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "StableUnCLIPImageNormalizer": "pipeline_stable_unclip",
    "StableUnCLIPImg2ImgPipeline": "pipeline_stable_unclip",
    "StableUnCLIPPipeline": "pipeline_stable_unclip",
    "UnCLIPImageVariationPipeline": "pipeline_unclip",
    "UnCLIPPipeline": "pipeline_unclip",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_unclip' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
