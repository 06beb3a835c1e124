"""Building blocks shared by the models of this plugin (Diffusers' state-dict key names)."""

from .activations import get_activation
from .attention import (
    Attention,
    AttentionProcessorMixin,
    AttnProcessor,
    BasicTransformerBlock,
    FeedForward,
)
from .embeddings import (
    CombinedTimestepLabelEmbeddings,
    GaussianFourierProjection,
    LabelEmbedding,
    PatchEmbed,
    PixArtAlphaCombinedTimestepSizeEmbeddings,
    PixArtAlphaTextProjection,
    TimestepEmbedding,
    Timesteps,
    get_2d_sincos_pos_embed,
    get_timestep_embedding,
)
from .normalization import AdaLayerNorm, AdaLayerNormSingle, AdaLayerNormZero, RMSNorm, SpatialNorm
from .resnet import Conv1dBlock, ResidualTemporalBlock1D, ResnetBlock2D
from .sampling import Downsample1D, Downsample2D, Upsample1D, Upsample2D
from .transformer_2d import SpatialTransformer2D

__all__ = [
    "AdaLayerNorm",
    "AdaLayerNormSingle",
    "AdaLayerNormZero",
    "Attention",
    "AttentionProcessorMixin",
    "AttnProcessor",
    "BasicTransformerBlock",
    "CombinedTimestepLabelEmbeddings",
    "Conv1dBlock",
    "Downsample1D",
    "Downsample2D",
    "FeedForward",
    "GaussianFourierProjection",
    "LabelEmbedding",
    "PatchEmbed",
    "PixArtAlphaCombinedTimestepSizeEmbeddings",
    "PixArtAlphaTextProjection",
    "RMSNorm",
    "ResidualTemporalBlock1D",
    "ResnetBlock2D",
    "SpatialNorm",
    "SpatialTransformer2D",
    "TimestepEmbedding",
    "Timesteps",
    "Upsample1D",
    "Upsample2D",
    "get_2d_sincos_pos_embed",
    "get_activation",
    "get_timestep_embedding",
]
