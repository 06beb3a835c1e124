"""``FlaxAutoencoderKL``: the KL-regularised autoencoder of latent diffusion in Flax (encode and decode).

Reads the PyTorch ``AutoencoderKL`` folder and converts the weights on load (Kingma & Welling
2014; Rombach et al. 2022, sec. 3). Arrays at the model's edges are NCHW like the PyTorch model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from .layers import Downsample2D, ResnetBlock2D, SpatialSelfAttention, Upsample2D, conv, group_norm
from .modeling import FlaxModelMixin

__all__ = ["FlaxAutoencoderKL", "FlaxDiagonalGaussianDistribution"]


@flax.struct.dataclass
class FlaxDiagonalGaussianDistribution:
    """The posterior q(z | x): ``mean`` and ``logvar`` ``(B, latent_channels, h, w)`` (logvar clamped to [-30, 20])."""

    mean: jax.Array
    logvar: jax.Array

    @property
    def std(self) -> jax.Array:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key: jax.Array) -> jax.Array:
        """``mean + std * eps``, ``eps`` ~ N(0, I) from ``key``."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean


class _MidBlock(nn.Module):
    """Resnet, self-attention, resnet (``UNetMidBlock2D`` without time embedding)."""

    channels: int
    groups: int
    eps: float
    add_attention: bool
    dtype: Any
    attention_kernel: str | None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ResnetBlock2D(self.channels, self.groups, self.eps, use_temb=False, dtype=self.dtype, name="resnets.0")(x)
        if self.add_attention:
            x = SpatialSelfAttention(
                self.channels, self.groups, self.eps, dtype=self.dtype, attention_kernel=self.attention_kernel,
                name="attentions.0",
            )(x)  # fmt: skip
        return ResnetBlock2D(self.channels, self.groups, self.eps, use_temb=False, dtype=self.dtype, name="resnets.1")(
            x
        )


class _Encoder(nn.Module):
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    groups: int
    out_channels: int
    add_attention: bool
    dtype: Any
    attention_kernel: str | None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ch, dt = self.block_out_channels, self.dtype
        x = conv(ch[0], 3, dt, "conv_in")(x)
        for i, c in enumerate(ch):
            for j in range(self.layers_per_block):
                x = ResnetBlock2D(c, self.groups, 1e-6, use_temb=False, dtype=dt, name=f"down_blocks.{i}.resnets.{j}")(
                    x
                )
            if i < len(ch) - 1:
                x = Downsample2D(c, 0, dtype=dt, name=f"down_blocks.{i}.downsamplers.0")(x)
        x = _MidBlock(ch[-1], self.groups, 1e-6, self.add_attention, dt, self.attention_kernel, name="mid_block")(x)
        x = nn.silu(group_norm(self.groups, 1e-6, dt, "conv_norm_out")(x))
        return conv(self.out_channels, 3, dt, "conv_out")(x)


class _Decoder(nn.Module):
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    groups: int
    out_channels: int
    add_attention: bool
    dtype: Any
    attention_kernel: str | None

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        rev, dt = self.block_out_channels[::-1], self.dtype
        x = conv(rev[0], 3, dt, "conv_in")(z)
        x = _MidBlock(rev[0], self.groups, 1e-6, self.add_attention, dt, self.attention_kernel, name="mid_block")(x)
        for i, c in enumerate(rev):
            for j in range(self.layers_per_block + 1):
                x = ResnetBlock2D(c, self.groups, 1e-6, use_temb=False, dtype=dt, name=f"up_blocks.{i}.resnets.{j}")(x)
            if i < len(rev) - 1:
                x = Upsample2D(c, dtype=dt, name=f"up_blocks.{i}.upsamplers.0")(x)
        x = nn.silu(group_norm(self.groups, 1e-6, dt, "conv_norm_out")(x))
        return conv(self.out_channels, 3, dt, "conv_out")(x)


class FlaxAutoencoderKL(nn.Module, FlaxModelMixin):
    """Encoder to a diagonal Gaussian over latents, decoder back to pixels (``AutoencoderKL`` config).

    ``encode(x)``: ``x`` ``(B, in_channels, H, W)`` in [-1, 1] -> :class:`FlaxDiagonalGaussianDistribution` over
    ``(B, latent_channels, H / f, W / f)`` with ``f = 2 ** (len(block_out_channels) - 1)``.
    ``decode(z)``: ``(B, latent_channels, h, w)`` -> ``(B, out_channels, h * f, w * f)``. Latents are unscaled:
    pipelines multiply by ``scaling_factor`` after encoding and divide before decoding.
    ``__call__(x)`` encodes, takes the mode and decodes.
    """

    torch_class_name: ClassVar[str] = "AutoencoderKL"
    supported_values: ClassVar[Mapping[str, tuple[Any, ...]]] = {
        "act_fn": ("silu",),
        "use_quant_conv": (True,),
        "use_post_quant_conv": (True,),
        "mid_block_add_attention": (True, False),
    }
    ignored_keys: ClassVar[frozenset[str]] = frozenset(
        {"sample_size", "force_upcast", "latents_mean", "latents_std", "shift_factor"}
    )

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    mid_block_add_attention: bool = True
    dtype: Any = jnp.float32
    attention_kernel: str | None = None

    @classmethod
    def _check_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        for key, kind in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            types = config.pop(key, None)
            if types is not None and any(t != kind for t in types):
                raise ValueError(f"FlaxAutoencoderKL: {key}={list(types)} is not supported (only {kind} blocks)")
        return super()._check_config(config)

    def config_dict(self) -> dict[str, Any]:
        out = super().config_dict()
        n = len(self.block_out_channels)
        out["down_block_types"] = ["DownEncoderBlock2D"] * n
        out["up_block_types"] = ["UpDecoderBlock2D"] * n
        return out

    def setup(self) -> None:
        ch, kern = tuple(self.block_out_channels), self.attention_kernel
        args = (ch, self.layers_per_block, self.norm_num_groups)
        self.encoder = _Encoder(*args, 2 * self.latent_channels, self.mid_block_add_attention, self.dtype, kern)
        self.decoder = _Decoder(*args, self.out_channels, self.mid_block_add_attention, self.dtype, kern)
        self.quant_conv = conv(2 * self.latent_channels, 1, self.dtype, "quant_conv")
        self.post_quant_conv = conv(self.latent_channels, 1, self.dtype, "post_quant_conv")

    def dummy_inputs(self) -> tuple[Any, ...]:
        side = 2 ** (len(self.block_out_channels) - 1)
        return (jnp.zeros((1, self.in_channels, side, side), self.dtype),)

    def encode(self, sample: jax.Array) -> FlaxDiagonalGaussianDistribution:
        """The posterior over latents of ``sample`` ``(B, C, H, W)``."""
        h = self.quant_conv(self.encoder(jnp.transpose(sample, (0, 2, 3, 1)).astype(self.dtype)))
        h = jnp.transpose(h, (0, 3, 1, 2))
        mean, logvar = jnp.split(h, 2, axis=1)
        return FlaxDiagonalGaussianDistribution(mean, jnp.clip(logvar, -30.0, 20.0))

    def decode(self, latents: jax.Array) -> jax.Array:
        """Pixels ``(B, out_channels, H, W)`` of unscaled ``latents`` ``(B, latent_channels, h, w)``."""
        z = self.post_quant_conv(jnp.transpose(latents, (0, 2, 3, 1)).astype(self.dtype))
        return jnp.transpose(self.decoder(z), (0, 3, 1, 2))

    def __call__(self, sample: jax.Array) -> jax.Array:
        return self.decode(self.encode(sample).mode())
