"""difflux-sd-variants: Stable Diffusion variants on the SD base (LCM, InstructPix2Pix, panorama, LDM3D, ...).

Importing the package is cheap; the classes load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LatentConsistencyModelImg2ImgPipeline": "pipeline_lcm",
    "LatentConsistencyModelPipeline": "pipeline_lcm",
    "StableDiffusionInstructPix2PixPipeline": "pipeline_instruct_pix2pix",
    "StableDiffusionPanoramaPipeline": "pipeline_panorama",
    "StableDiffusionLDM3DPipeline": "pipeline_ldm3d",
    "LDM3DPipelineOutput": "pipeline_ldm3d",
    "StableDiffusionParadigmsPipeline": "pipeline_paradigms",
    "SemanticStableDiffusionPipeline": "pipeline_semantic",
    "SemanticStableDiffusionPipelineOutput": "pipeline_semantic",
    "CycleDiffusionPipeline": "pipeline_cycle",
    "StableDiffusionModelEditingPipeline": "pipeline_model_editing",
    "AltDiffusionPipeline": "pipeline_alt_diffusion",
    "AltDiffusionImg2ImgPipeline": "pipeline_alt_diffusion",
    "AltDiffusionPipelineOutput": "pipeline_alt_diffusion",
    "RobertaSeriesConfig": "roberta_series",
    "PaintByExamplePipeline": "pipeline_paint_by_example",
    "PaintByExampleImageEncoder": "paint_by_example_encoder",
    "RobertaSeriesModelWithTransformation": "roberta_series",
    "StableDiffusionXLInstructPix2PixPipeline": "pipeline_instruct_pix2pix",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_sd_variants' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
