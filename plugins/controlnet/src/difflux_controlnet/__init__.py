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
    "MultiAdapter": "multiadapter",
    "T2IAdapter": "t2i_adapter",
    "StableDiffusionAdapterPipeline": "pipeline_adapter",
    "StableDiffusionXLAdapterPipeline": "pipeline_adapter_sd_xl",
    "ControlNetXSAdapter": "controlnet_xs",
    "ControlNetXSOutput": "controlnet_xs",
    "UNetControlNetXSModel": "controlnet_xs",
    "StableDiffusionControlNetXSPipeline": "pipeline_controlnet_xs",
    "StableDiffusionXLControlNetXSPipeline": "pipeline_controlnet_xs_sd_xl",
    "StableDiffusionControlNetImg2ImgPipeline": "pipeline_controlnet",
    "StableDiffusionControlNetPipeline": "pipeline_controlnet",
    "StableDiffusionControlNetInpaintPipeline": "pipeline_controlnet_inpaint",
    "StableDiffusionXLControlNetPipeline": "pipeline_controlnet_sd_xl",
    "StableDiffusionXLControlNetImg2ImgPipeline": "pipeline_controlnet_sd_xl",
    "StableDiffusionXLControlNetInpaintPipeline": "pipeline_controlnet_sd_xl",
    "ControlNetUnionModel": "controlnet_union",
    "MultiControlNetUnionModel": "controlnet_union",
    "StableDiffusionXLControlNetUnionPipeline": "pipeline_controlnet_union_sd_xl",
    "StableDiffusionXLControlNetUnionImg2ImgPipeline": "pipeline_controlnet_union_sd_xl",
    "StableDiffusionXLControlNetUnionInpaintPipeline": "pipeline_controlnet_union_sd_xl",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_controlnet' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
