"""difflux plugin: Stable Diffusion 1.x/2.x and SDXL pipelines (txt2img, img2img, inpainting).

Importing the package is cheap; the pipeline classes import torch when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionPipeline",
    "StableDiffusionPipelineOutput",
    "StableDiffusionSafetyChecker",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLPipelineOutput",
]

_LAZY = {
    "StableDiffusionPipeline": "pipeline_stable_diffusion",
    "StableDiffusionImg2ImgPipeline": "pipeline_stable_diffusion",
    "StableDiffusionInpaintPipeline": "pipeline_stable_diffusion",
    "StableDiffusionXLPipeline": "pipeline_stable_diffusion_xl",
    "StableDiffusionXLImg2ImgPipeline": "pipeline_stable_diffusion_xl",
    "StableDiffusionXLInpaintPipeline": "pipeline_stable_diffusion_xl",
    "StableDiffusionPipelineOutput": "_common",
    "StableDiffusionXLPipelineOutput": "_common",
    "StableDiffusionSafetyChecker": "safety_checker",
}

if TYPE_CHECKING:
    from ._common import StableDiffusionPipelineOutput, StableDiffusionXLPipelineOutput
    from .pipeline_stable_diffusion import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
    )
    from .pipeline_stable_diffusion_xl import (
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )
    from .safety_checker import StableDiffusionSafetyChecker


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_stable_diffusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
