"""difflux-deepfloyd-if: DeepFloyd IF's cascaded pixel-space pipelines.

Importing the package is cheap; the classes load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "IFImg2ImgPipeline": "pipeline_if_img2img",
    "IFImg2ImgSuperResolutionPipeline": "pipeline_if_img2img",
    "IFInpaintingPipeline": "pipeline_if_inpainting",
    "IFInpaintingSuperResolutionPipeline": "pipeline_if_inpainting",
    "IFPipeline": "pipeline_if",
    "IFPipelineOutput": "_base",
    "IFSafetyChecker": "safety_checker",
    "IFSuperResolutionPipeline": "pipeline_if",
    "IFWatermarker": "watermark",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_deepfloyd_if' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
