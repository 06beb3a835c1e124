"""difflux-wuerstchen: Würstchen's models and pipelines.

Importing the package is cheap; the classes load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "WuerstchenCombinedPipeline": "pipeline_wuerstchen_combined",
    "PaellaVQModel": "modeling",
    "WuerstchenDecoderPipeline": "pipeline_wuerstchen",
    "WuerstchenDiffNeXt": "modeling",
    "WuerstchenPriorPipeline": "pipeline_wuerstchen",
    "WuerstchenPrior": "modeling",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_wuerstchen' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
