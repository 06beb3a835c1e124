"""Flax building blocks of the Stable Diffusion UNet and VAE, named as their PyTorch counterparts.

Every block works on NHWC arrays (channels last, JAX's native conv layout); the models convert
from / to the NCHW layout of their PyTorch twins at their edges. Submodule names are the PyTorch
attribute names (``norm1``, ``to_out.0`` ...), so :mod:`difflux_flax.modeling` converts weights
by name.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .attention import attention

__all__ = [
    "Attention",
    "BasicTransformerBlock",
    "Downsample2D",
    "FeedForward",
    "ResnetBlock2D",
    "SpatialSelfAttention",
    "TimestepEmbedding",
    "Transformer2DModel",
    "Upsample2D",
    "group_norm",
    "timestep_embedding",
]


def group_norm(groups: int, eps: float, dtype: Any, name: str) -> nn.GroupNorm:
    """GroupNorm over the channel groups of an NHWC array (two-pass variance, as PyTorch)."""
    return nn.GroupNorm(num_groups=groups, epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


def conv(features: int, kernel: int, dtype: Any, name: str, stride: int = 1, padding: Any = None) -> nn.Conv:
    """A 2-D convolution with PyTorch's symmetric padding of ``kernel // 2`` by default."""
    pad = ((kernel // 2, kernel // 2),) * 2 if padding is None else padding
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=pad, dtype=dtype, name=name)


def timestep_embedding(
    timesteps: jax.Array, dim: int, flip_sin_to_cos: bool, downscale_freq_shift: float, max_period: int = 10000
) -> jax.Array:
    """Sinusoidal timestep embedding ``(batch, dim)`` float32 (Vaswani et al. 2017, sec. 3.5; DDPM's UNet)."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - downscale_freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """``linear_2(silu(linear_1(x)))``: the UNet's timestep MLP."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.features, dtype=self.dtype, name="linear_1")(x)
        return nn.Dense(self.features, dtype=self.dtype, name="linear_2")(nn.silu(x))


class ResnetBlock2D(nn.Module):
    """GroupNorm-SiLU-conv twice, the timestep embedding added in between, 1x1 conv shortcut on a channel change
    (He et al. 2016; DDPM's UNet). ``x``: ``(B, H, W, C)``; ``temb``: ``(B, T)`` or ``None``."""

    out_channels: int
    groups: int = 32
    eps: float = 1e-6
    use_temb: bool = True
    output_scale_factor: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
        h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm1")(x))
        h = conv(self.out_channels, 3, self.dtype, "conv1")(h)
        if self.use_temb and temb is not None:
            h = h + nn.Dense(self.out_channels, dtype=self.dtype, name="time_emb_proj")(nn.silu(temb))[:, None, None, :]
        h = nn.silu(group_norm(self.groups, self.eps, self.dtype, "norm2")(h))
        h = conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        return (x + h) / self.output_scale_factor


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv; ``padding=0`` pads right / bottom by one first (the VAE encoder's layout)."""

    out_channels: int
    padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding == 0:
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
            return conv(self.out_channels, 3, self.dtype, "conv", stride=2, padding=((0, 0), (0, 0)))(x)
        p = self.padding
        return conv(self.out_channels, 3, self.dtype, "conv", stride=2, padding=((p, p), (p, p)))(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 conv."""

    out_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(self.out_channels, 3, self.dtype, "conv")(x)


class Attention(nn.Module):
    """Multi-head attention with ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (PyTorch ``Attention``).

    ``x``: ``(B, L, C)``; ``context``: ``(B, S, D)`` or ``None`` (self-attention). The kernel comes from
    :mod:`difflux_flax.attention` (``attention_kernel``: a name, or ``None`` for the current choice).
    """

    heads: int
    head_dim: int
    qkv_bias: bool = False
    dtype: Any = jnp.float32
    attention_kernel: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
        inner = self.heads * self.head_dim
        context = x if context is None else context
        q = nn.Dense(inner, use_bias=self.qkv_bias, dtype=self.dtype, name="to_q")(x)
        k = nn.Dense(inner, use_bias=self.qkv_bias, dtype=self.dtype, name="to_k")(context)
        v = nn.Dense(inner, use_bias=self.qkv_bias, dtype=self.dtype, name="to_v")(context)
        b = x.shape[0]
        split = (b, -1, self.heads, self.head_dim)
        out = attention(q.reshape(split), k.reshape(split), v.reshape(split), kernel=self.attention_kernel)
        out = out.reshape(b, -1, inner)
        return nn.Dense(x.shape[-1], dtype=self.dtype, name="to_out.0")(out)


class FeedForward(nn.Module):
    """GEGLU feed-forward (Shazeer 2020): ``net.2(h * gelu(gate))`` with ``h, gate = net.0.proj(x)``."""

    dim: int
    mult: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inner = self.dim * self.mult
        h, gate = jnp.split(nn.Dense(inner * 2, dtype=self.dtype, name="net.0.proj")(x), 2, axis=-1)
        return nn.Dense(self.dim, dtype=self.dtype, name="net.2")(h * nn.gelu(gate, approximate=False))


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention, feed-forward, each pre-LayerNorm with a residual (SD's transformer block)."""

    dim: int
    heads: int
    head_dim: int
    only_cross_attention: bool = False
    dtype: Any = jnp.float32
    attention_kernel: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        def ln(name: str) -> nn.LayerNorm:
            return nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, use_fast_variance=False, name=name)

        def attn(name: str) -> Attention:
            return Attention(
                self.heads, self.head_dim, dtype=self.dtype, attention_kernel=self.attention_kernel, name=name
            )

        x = attn("attn1")(ln("norm1")(x), context if self.only_cross_attention else None) + x
        x = attn("attn2")(ln("norm2")(x), context) + x
        return FeedForward(self.dim, dtype=self.dtype, name="ff")(ln("norm3")(x)) + x


class Transformer2DModel(nn.Module):
    """GroupNorm, ``proj_in`` (1x1 conv or linear), transformer blocks, ``proj_out``, residual: the UNet's
    spatial transformer (Rombach et al. 2022). ``x``: ``(B, H, W, C)``; ``context``: ``(B, S, D)``."""

    heads: int
    head_dim: int
    num_layers: int = 1
    groups: int = 32
    use_linear_projection: bool = False
    only_cross_attention: bool = False
    dtype: Any = jnp.float32
    attention_kernel: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        inner = self.heads * self.head_dim
        residual = x
        x = group_norm(self.groups, 1e-6, self.dtype, "norm")(x)
        if self.use_linear_projection:
            x = nn.Dense(inner, dtype=self.dtype, name="proj_in")(x.reshape(b, h * w, c))
        else:
            x = conv(inner, 1, self.dtype, "proj_in")(x).reshape(b, h * w, inner)
        for i in range(self.num_layers):
            x = BasicTransformerBlock(
                inner,
                self.heads,
                self.head_dim,
                only_cross_attention=self.only_cross_attention,
                dtype=self.dtype,
                attention_kernel=self.attention_kernel,
                name=f"transformer_blocks.{i}",
            )(x, context)
        if self.use_linear_projection:
            x = nn.Dense(c, dtype=self.dtype, name="proj_out")(x).reshape(b, h, w, c)
        else:
            x = conv(c, 1, self.dtype, "proj_out")(x.reshape(b, h, w, inner))
        return x + residual


class SpatialSelfAttention(nn.Module):
    """The VAE mid-block attention: GroupNorm, one-head self-attention over pixels, residual (PyTorch
    ``Attention`` with ``group_norm`` and ``residual_connection``). ``x``: ``(B, H, W, C)``."""

    head_dim: int
    groups: int = 32
    eps: float = 1e-6
    dtype: Any = jnp.float32
    attention_kernel: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        heads = max(c // self.head_dim, 1)
        y = nn.GroupNorm(
            num_groups=self.groups, epsilon=self.eps, dtype=self.dtype, use_fast_variance=False, name="group_norm"
        )(x)
        y = y.reshape(b, h * w, c)
        inner = heads * (c // heads)
        q = nn.Dense(inner, dtype=self.dtype, name="to_q")(y)
        k = nn.Dense(inner, dtype=self.dtype, name="to_k")(y)
        v = nn.Dense(inner, dtype=self.dtype, name="to_v")(y)
        split = (b, h * w, heads, c // heads)
        out = attention(q.reshape(split), k.reshape(split), v.reshape(split), kernel=self.attention_kernel)
        out = nn.Dense(c, dtype=self.dtype, name="to_out.0")(out.reshape(b, h * w, inner))
        return out.reshape(b, h, w, c) + x
