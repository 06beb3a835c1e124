"""Latent transformers: DiT, PixArt and Diffusers' legacy ``Transformer2DModel``."""

from ._patched import Transformer2DModelOutput
from .dit import DiTTransformer2DModel
from .pixart import PixArtTransformer2DModel
from .transformer_2d import Transformer2DModel

__all__ = ["DiTTransformer2DModel", "PixArtTransformer2DModel", "Transformer2DModel", "Transformer2DModelOutput"]
