"""difflux-sd-guidance: Stable Diffusion pipelines that read or steer attention.

Importing the package is cheap; the classes load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "StableDiffusionAttendAndExcitePipeline": "pipeline_attend_and_excite",
    "DiffEditInversionPipelineOutput": "pipeline_diffedit",
    "StableDiffusionDiffEditPipeline": "pipeline_diffedit",
    "Pix2PixInversionPipelineOutput": "pipeline_pix2pix_zero",
    "StableDiffusionGLIGENPipeline": "pipeline_gligen",
    "StableDiffusionGLIGENTextImagePipeline": "pipeline_gligen",
    "StableDiffusionPix2PixZeroPipeline": "pipeline_pix2pix_zero",
    "StableDiffusionSAGPipeline": "pipeline_sag",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_sd_guidance' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
