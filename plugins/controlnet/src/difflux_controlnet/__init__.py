"""difflux-controlnet: ControlNet models and ControlNet-conditioned Stable Diffusion pipelines.

Importing the package is cheap; the classes load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ControlNetModel": "controlnet",
    "ControlNetOutput": "controlnet",
    "MultiControlNetModel": "multicontrolnet",
    "StableDiffusionControlNetImg2ImgPipeline": "pipeline_controlnet",
    "StableDiffusionControlNetPipeline": "pipeline_controlnet",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_controlnet' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
