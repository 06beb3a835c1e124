"""difflux-flax: Stable Diffusion on JAX / Flax, reading and writing the Diffusers (PyTorch) folder layout.

Importing the package is cheap (no JAX); the classes load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "FlaxSchedulerState": "schedulers",
    "FlaxSchedulerOutput": "schedulers",
    "FlaxDDIMScheduler": "schedulers",
    "FlaxDDPMScheduler": "schedulers",
    "FlaxPNDMScheduler": "schedulers",
    "FlaxLMSDiscreteScheduler": "schedulers",
    "FlaxEulerDiscreteScheduler": "schedulers",
    "FlaxDPMSolverMultistepScheduler": "schedulers",
    "FlaxUNet2DConditionModel": "unet",
    "FlaxUNet2DConditionOutput": "unet",
    "FlaxAutoencoderKL": "vae",
    "FlaxDiagonalGaussianDistribution": "vae",
    "FlaxCLIPTextModel": "clip",
    "FlaxCLIPTextOutput": "clip",
    "ParamsError": "modeling",
    "FlaxDiffusionPipeline": "pipeline",
    "replicate": "pipeline",
    "shard": "pipeline",
    "FlaxStableDiffusionPipeline": "pipeline_stable_diffusion",
    "FlaxStableDiffusionImg2ImgPipeline": "pipeline_stable_diffusion",
    "FlaxStableDiffusionInpaintPipeline": "pipeline_stable_diffusion",
    "FlaxStableDiffusionPipelineOutput": "pipeline_stable_diffusion",
    "register_attention_kernel": "attention",
    "set_attention_kernel": "attention",
    "attention_kernel": "attention",
    "available_kernels": "attention",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_flax' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
