"""``FlaxUNet2DConditionModel``: the text-conditioned UNet of Stable Diffusion 1.x / 2.x in Flax.

Reads the PyTorch ``UNet2DConditionModel`` folder (``config.json`` +
``diffusion_pytorch_model.safetensors``) and converts the weights on load; the blocks are
``CrossAttnDownBlock2D`` / ``DownBlock2D``, ``UNetMidBlock2DCrossAttn``, ``CrossAttnUpBlock2D`` /
``UpBlock2D`` (Rombach et al. 2022, latent diffusion).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from .layers import (
    Downsample2D,
    ResnetBlock2D,
    TimestepEmbedding,
    Transformer2DModel,
    Upsample2D,
    conv,
    group_norm,
    timestep_embedding,
)
from .modeling import FlaxModelMixin

__all__ = ["FlaxUNet2DConditionModel", "FlaxUNet2DConditionOutput"]

_DOWN = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP = ("CrossAttnUpBlock2D", "UpBlock2D")


@flax.struct.dataclass
class FlaxUNet2DConditionOutput:
    """``sample``: ``(B, C_out, H, W)`` the predicted noise (or sample / velocity), NCHW like the input."""

    sample: jax.Array


def _per_block(value: Any, n: int) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


class FlaxUNet2DConditionModel(nn.Module, FlaxModelMixin):
    """The Stable Diffusion UNet (config keys as Diffusers' ``UNet2DConditionModel``).

    ``__call__(sample, timesteps, encoder_hidden_states)``: ``sample`` ``(B, C_in, H, W)`` (NCHW, H and W
    divisible by ``2 ** (len(block_out_channels) - 1)``), ``timesteps`` a scalar or ``(B,)``,
    ``encoder_hidden_states`` ``(B, S, cross_attention_dim)``; returns a
    :class:`FlaxUNet2DConditionOutput` (or a 1-tuple with ``return_dict=False``), in ``dtype``.

    :raises ValueError: (at construction) for config options the Flax port does not implement
        (SDXL's added embeddings, class embeddings, other block types).
    """

    torch_class_name: ClassVar[str] = "UNet2DConditionModel"
    supported_values: ClassVar[Mapping[str, tuple[Any, ...]]] = {
        "mid_block_type": ("UNetMidBlock2DCrossAttn",),
        "act_fn": ("silu",),
        "class_embed_type": (None,),
        "addition_embed_type": (None,),
        "encoder_hid_dim_type": (None,),
        "encoder_hid_dim": (None,),
        "time_embedding_type": ("positional",),
        "time_cond_proj_dim": (None,),
        "resnet_time_scale_shift": ("default",),
        "dual_cross_attention": (False,),
        "center_input_sample": (False,),
        "conv_in_kernel": (3,),
        "conv_out_kernel": (3,),
        "attention_type": ("default",),
        "cross_attention_norm": (None,),
        "num_class_embeds": (None,),
        "time_embedding_dim": (None,),
        "time_embedding_act_fn": (None,),
        "timestep_post_act": (None,),
        "resnet_skip_time_act": (False,),
        "resnet_out_scale_factor": (1.0, 1),
        "reverse_transformer_layers_per_block": (None,),
        "addition_time_embed_dim": (None,),
        "projection_class_embeddings_input_dim": (None,),
        "class_embeddings_concat": (False,),
        "mid_block_only_cross_attention": (None, False),
    }
    ignored_keys: ClassVar[frozenset[str]] = frozenset({"sample_size", "upcast_attention", "dropout"})

    in_channels: int = 4
    out_channels: int = 4
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    only_cross_attention: bool | tuple[bool, ...] = False
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    transformer_layers_per_block: int | tuple[int, ...] = 1
    attention_head_dim: int | tuple[int, ...] = 8
    num_attention_heads: int | tuple[int, ...] | None = None
    use_linear_projection: bool = False
    dtype: Any = jnp.float32
    attention_kernel: str | None = None

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        for kind, allowed in (("down_block_types", _DOWN), ("up_block_types", _UP)):
            types = getattr(self, kind)
            bad = [t for t in types if t not in allowed]
            if bad or len(types) != n:
                raise ValueError(
                    f"FlaxUNet2DConditionModel: {kind}={list(types)} must have {n} entries out of {allowed}"
                )
        if not isinstance(self.layers_per_block, int):
            raise ValueError("FlaxUNet2DConditionModel: layers_per_block must be one int in the Flax port")
        super().__post_init__()

    def dummy_inputs(self) -> tuple[Any, ...]:
        side = 2 ** (len(self.block_out_channels) - 1)
        return (
            jnp.zeros((1, self.in_channels, side, side), self.dtype),
            jnp.ones((1,), jnp.int32),
            jnp.zeros((1, 1, self.cross_attention_dim), self.dtype),
        )

    def _heads(self) -> tuple[int, ...]:
        n = len(self.block_out_channels)
        return _per_block(self.num_attention_heads or self.attention_head_dim, n)

    @nn.compact
    def __call__(
        self,
        sample: jax.Array,
        timesteps: jax.Array | int | float,
        encoder_hidden_states: jax.Array,
        return_dict: bool = True,
    ) -> FlaxUNet2DConditionOutput | tuple[jax.Array]:
        n = len(self.block_out_channels)
        heads = self._heads()
        layers = _per_block(self.transformer_layers_per_block, n)
        cross_only = _per_block(self.only_cross_attention, n)
        ch = self.block_out_channels
        groups, eps, dt = self.norm_num_groups, self.norm_eps, self.dtype
        context = encoder_hidden_states.astype(dt)

        t = jnp.asarray(timesteps)
        t = jnp.broadcast_to(t.reshape(-1) if t.ndim else t[None], (sample.shape[0],))
        temb = timestep_embedding(t, ch[0], self.flip_sin_to_cos, self.freq_shift).astype(dt)
        temb = TimestepEmbedding(ch[0] * 4, dtype=dt, name="time_embedding")(temb)

        x = jnp.transpose(sample, (0, 2, 3, 1)).astype(dt)
        x = conv(ch[0], 3, dt, "conv_in")(x)
        skips = [x]
        for i, kind in enumerate(self.down_block_types):
            prefix = f"down_blocks.{i}"
            for j in range(self.layers_per_block):
                x = ResnetBlock2D(ch[i], groups, eps, dtype=dt, name=f"{prefix}.resnets.{j}")(x, temb)
                if kind == "CrossAttnDownBlock2D":
                    x = self._transformer(ch[i], heads[i], layers[i], cross_only[i], f"{prefix}.attentions.{j}")(
                        x, context
                    )
                skips.append(x)
            if i < n - 1:
                x = Downsample2D(ch[i], self.downsample_padding, dtype=dt, name=f"{prefix}.downsamplers.0")(x)
                skips.append(x)

        x = ResnetBlock2D(ch[-1], groups, eps, output_scale_factor=self.mid_block_scale_factor, dtype=dt,
                          name="mid_block.resnets.0")(x, temb)  # fmt: skip
        x = self._transformer(ch[-1], heads[-1], layers[-1], False, "mid_block.attentions.0")(x, context)
        x = ResnetBlock2D(ch[-1], groups, eps, output_scale_factor=self.mid_block_scale_factor, dtype=dt,
                          name="mid_block.resnets.1")(x, temb)  # fmt: skip

        rev_ch, rev_heads, rev_layers = ch[::-1], heads[::-1], layers[::-1]
        rev_cross = cross_only[::-1]
        for i, kind in enumerate(self.up_block_types):
            prefix = f"up_blocks.{i}"
            for j in range(self.layers_per_block + 1):
                x = jnp.concatenate([x, skips.pop()], axis=-1)
                x = ResnetBlock2D(rev_ch[i], groups, eps, dtype=dt, name=f"{prefix}.resnets.{j}")(x, temb)
                if kind == "CrossAttnUpBlock2D":
                    x = self._transformer(
                        rev_ch[i], rev_heads[i], rev_layers[i], rev_cross[i], f"{prefix}.attentions.{j}"
                    )(x, context)
            if i < n - 1:
                x = Upsample2D(rev_ch[i], dtype=dt, name=f"{prefix}.upsamplers.0")(x)

        x = nn.silu(group_norm(groups, eps, dt, "conv_norm_out")(x))
        x = conv(self.out_channels, 3, dt, "conv_out")(x)
        out = jnp.transpose(x, (0, 3, 1, 2))
        return FlaxUNet2DConditionOutput(sample=out) if return_dict else (out,)

    def _transformer(self, channels: int, heads: int, layers: int, cross_only: bool, name: str) -> Transformer2DModel:
        return Transformer2DModel(
            heads,
            channels // heads,
            num_layers=layers,
            groups=self.norm_num_groups,
            use_linear_projection=self.use_linear_projection,
            only_cross_attention=cross_only,
            dtype=self.dtype,
            attention_kernel=self.attention_kernel,
            name=name,
        )
