"""difflux-kandinsky: Kandinsky 2.2 prior, decoder and combined pipelines.

Importing the package is cheap; the classes load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Kandinsky3Img2ImgPipeline": "pipeline_kandinsky3",
    "Kandinsky3Pipeline": "pipeline_kandinsky3",
    "KandinskyCombinedPipeline": "pipeline_kandinsky_combined",
    "KandinskyImg2ImgCombinedPipeline": "pipeline_kandinsky_combined",
    "KandinskyImg2ImgPipeline": "pipeline_kandinsky",
    "KandinskyInpaintCombinedPipeline": "pipeline_kandinsky_combined",
    "KandinskyInpaintPipeline": "pipeline_kandinsky",
    "KandinskyPipeline": "pipeline_kandinsky",
    "KandinskyPriorPipeline": "pipeline_kandinsky",
    "MCLIPConfig": "text_encoder",
    "MultilingualCLIP": "text_encoder",
    "KandinskyPriorPipelineOutput": "pipeline_kandinsky2_2_prior",
    "KandinskyV22CombinedPipeline": "pipeline_kandinsky2_2_combined",
    "KandinskyV22ControlnetImg2ImgPipeline": "pipeline_kandinsky2_2",
    "KandinskyV22ControlnetPipeline": "pipeline_kandinsky2_2",
    "KandinskyV22Img2ImgCombinedPipeline": "pipeline_kandinsky2_2_combined",
    "KandinskyV22Img2ImgPipeline": "pipeline_kandinsky2_2",
    "KandinskyV22InpaintCombinedPipeline": "pipeline_kandinsky2_2_combined",
    "KandinskyV22InpaintPipeline": "pipeline_kandinsky2_2",
    "KandinskyV22Pipeline": "pipeline_kandinsky2_2",
    "KandinskyV22PriorEmb2EmbPipeline": "pipeline_kandinsky2_2_prior",
    "KandinskyV22PriorPipeline": "pipeline_kandinsky2_2_prior",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_kandinsky' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
