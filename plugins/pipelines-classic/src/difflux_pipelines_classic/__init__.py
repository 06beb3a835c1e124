"""difflux-pipelines-classic: Latent Diffusion text-to-image and super-resolution, VQ-Diffusion, value-guided
planning.

Importing the package is cheap; the classes load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LDMBertConfig": "ldm_bert",
    "LDMBertModel": "ldm_bert",
    "LDMSuperResolutionPipeline": "pipeline_ldm",
    "LDMTextToImagePipeline": "pipeline_ldm",
    "LearnedClassifierFreeSamplingEmbeddings": "vq_diffusion",
    "PlanningEnvironment": "value_guided",
    "VQDiffusionPipeline": "vq_diffusion",
    "ValueGuidedRLPipeline": "value_guided",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_pipelines_classic' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
