"""difflux-pixart: PixArt-alpha and PixArt-sigma text-to-image pipelines.

Importing the package is cheap; the classes load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ASPECT_RATIO_1024_BIN": "aspect_ratios",
    "ASPECT_RATIO_2048_BIN": "aspect_ratios",
    "ASPECT_RATIO_256_BIN": "aspect_ratios",
    "ASPECT_RATIO_512_BIN": "aspect_ratios",
    "MaskedPromptEmbeds": "prompts",
    "PixArtAlphaPipeline": "pipeline_pixart",
    "PixArtSigmaPipeline": "pipeline_pixart",
    "clean_caption": "captions",
    "classify_height_width_bin": "aspect_ratios",
    "encode_prompt_t5": "prompts",
    "resize_and_crop_tensor": "aspect_ratios",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_pixart' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
