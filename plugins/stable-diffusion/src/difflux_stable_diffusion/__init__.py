"""difflux plugin: Stable Diffusion 1.x/2.x and SDXL: txt2img, img2img, inpainting, depth, variations, upscalers.

Importing the package is cheap; the pipeline classes import torch when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "StableDiffusionDepth2ImgPipeline",
    "StableDiffusionImageVariationPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionLatentUpscalePipeline",
    "StableDiffusionPipeline",
    "StableDiffusionPipelineOutput",
    "StableDiffusionSafetyChecker",
    "StableDiffusionUpscalePipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLPipelineOutput",
]

_LAZY = {
    "StableDiffusionDepth2ImgPipeline": "pipeline_depth2img",
    "StableDiffusionImageVariationPipeline": "pipeline_image_variation",
    "StableDiffusionLatentUpscalePipeline": "pipeline_upscale",
    "StableDiffusionUpscalePipeline": "pipeline_upscale",
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
    from .pipeline_depth2img import StableDiffusionDepth2ImgPipeline
    from .pipeline_image_variation import StableDiffusionImageVariationPipeline
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
    from .pipeline_upscale import StableDiffusionLatentUpscalePipeline, StableDiffusionUpscalePipeline
    from .safety_checker import StableDiffusionSafetyChecker


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_stable_diffusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
