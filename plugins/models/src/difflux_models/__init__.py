"""difflux models plugin: UNets, autoencoders and transformers with Diffusers' weights format.

Model classes import lazily (``difflux_models.UNet2DConditionModel`` loads torch on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AutoencoderKL",
    "CLIPImageProjection",
    "DiTTransformer2DModel",
    "Kandinsky3UNet",
    "PixArtTransformer2DModel",
    "PriorTransformer",
    "Transformer2DModel",
    "UNet1DModel",
    "UNet2DConditionModel",
    "UNet2DModel",
    "UnCLIPTextProjModel",
    "VQModel",
]

_LOCATIONS = {
    "AutoencoderKL": "difflux_models.autoencoder_kl",
    "CLIPImageProjection": "difflux_models.clip_image_projection",
    "DiTTransformer2DModel": "difflux_models.transformers.dit",
    "Kandinsky3UNet": "difflux_models.unet_kandinsky3",
    "PixArtTransformer2DModel": "difflux_models.transformers.pixart",
    "PriorTransformer": "difflux_models.transformers.prior_transformer",
    "Transformer2DModel": "difflux_models.transformers.transformer_2d",
    "UnCLIPTextProjModel": "difflux_models.unclip_text_proj",
    "UNet1DModel": "difflux_models.unet_1d",
    "UNet2DConditionModel": "difflux_models.unet_2d_condition",
    "UNet2DModel": "difflux_models.unet_2d",
    "VQModel": "difflux_models.vq_model",
}


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
