"""``FlaxCLIPTextModel``: the CLIP text encoder (Radford et al. 2021) in Flax, reading transformers' folder.

transformers 5 dropped its Flax classes, so this plugin carries the text tower Stable Diffusion
needs. It loads ``text_encoder/config.json`` + ``model.safetensors`` written by transformers'
``CLIPTextModel`` (keys ``text_model.*``) and converts the weights on load.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from .modeling import FlaxModelMixin

__all__ = ["FlaxCLIPTextModel", "FlaxCLIPTextOutput"]


@flax.struct.dataclass
class FlaxCLIPTextOutput:
    """``last_hidden_state`` ``(B, S, hidden_size)`` after the final LayerNorm; ``pooler_output`` ``(B, hidden_size)``
    at the end-of-text token; ``hidden_states``: the embeddings and every layer's output (``output_hidden_states``)."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None


def _act(name: str, x: jax.Array) -> jax.Array:
    if name == "quick_gelu":
        return x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return jax.nn.gelu(x, approximate=True)
    raise ValueError(f"FlaxCLIPTextModel: hidden_act={name!r} is not supported; use quick_gelu or gelu")


class _SelfAttention(nn.Module):
    heads: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, s, d = x.shape
        hd = d // self.heads

        def proj(name: str) -> jax.Array:
            return nn.Dense(d, dtype=self.dtype, name=name)(x).reshape(b, s, self.heads, hd)

        q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * hd**-0.5
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, s, d)
        return nn.Dense(d, dtype=self.dtype, name="out_proj")(out)


class _Layer(nn.Module):
    heads: int
    intermediate_size: int
    act: str
    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        def ln(name: str) -> nn.LayerNorm:
            return nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, use_fast_variance=False, name=name)

        x = x + _SelfAttention(self.heads, self.dtype, name="self_attn")(ln("layer_norm1")(x), mask)
        h = nn.Dense(self.intermediate_size, dtype=self.dtype, name="mlp.fc1")(ln("layer_norm2")(x))
        return x + nn.Dense(x.shape[-1], dtype=self.dtype, name="mlp.fc2")(_act(self.act, h))


class FlaxCLIPTextModel(nn.Module, FlaxModelMixin):
    """The CLIP text transformer (config keys as transformers' ``CLIPTextConfig``).

    ``__call__(input_ids, attention_mask=None, output_hidden_states=False)``: ``input_ids`` int
    ``(B, S)`` with ``S <= max_position_embeddings``; returns :class:`FlaxCLIPTextOutput` in ``dtype``.
    """

    torch_class_name: ClassVar[str] = "CLIPTextModel"
    weights_names: ClassVar[tuple[str, ...]] = ("model.safetensors",)
    supported_values: ClassVar[Mapping[str, tuple[Any, ...]]] = {
        "hidden_act": ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")
    }

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2
    dtype: Any = jnp.float32
    attention_kernel: str | None = None

    def convert_state_dict(self, state_dict: Mapping[str, np.ndarray], where: str = "") -> dict[str, Any]:
        """Flax params from transformers' keys, with (published checkpoints, transformers 4) or without
        (transformers 5) the ``text_model.`` prefix; ``text_projection`` (a projection head) is left out."""
        plain = {k.removeprefix("text_model."): v for k, v in state_dict.items() if not k.startswith("text_projection")}
        return super().convert_state_dict(plain, where)

    def torch_state_dict(self, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """transformers' state dict of ``params``, keys under ``text_model.`` (the published layout, which
        transformers 4 and 5 both read)."""
        return {f"text_model.{k}": v for k, v in super().torch_state_dict(params).items()}

    def config_dict(self) -> dict[str, Any]:
        out = super().config_dict()
        out.pop("_class_name")
        return {**out, "architectures": ["CLIPTextModel"], "model_type": "clip_text_model"}

    def dummy_inputs(self) -> tuple[Any, ...]:
        return (jnp.zeros((1, 2), jnp.int32),)

    @nn.compact
    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, output_hidden_states: bool = False
    ) -> FlaxCLIPTextOutput:
        if input_ids.ndim != 2 or not jnp.issubdtype(input_ids.dtype, jnp.integer):
            raise ValueError(
                f"FlaxCLIPTextModel: input_ids must be int (batch, seq), got {input_ids.dtype} {input_ids.shape}"
            )
        if input_ids.shape[1] > self.max_position_embeddings:
            raise ValueError(
                f"FlaxCLIPTextModel: {input_ids.shape[1]} tokens is more than max_position_embeddings="
                f"{self.max_position_embeddings}; truncate the prompt ids"
            )
        return self._encode(input_ids, attention_mask, output_hidden_states)

    def _encode(
        self, input_ids: jax.Array, attention_mask: jax.Array | None, output_hidden_states: bool
    ) -> FlaxCLIPTextOutput:
        dt = self.dtype
        b, s = input_ids.shape
        tok = nn.Embed(self.vocab_size, self.hidden_size, dtype=dt, name="embeddings.token_embedding")
        pos = nn.Embed(self.max_position_embeddings, self.hidden_size, dtype=dt, name="embeddings.position_embedding")
        x = tok(input_ids) + pos(jnp.arange(s)[None, :])
        mask = jnp.tril(jnp.ones((s, s), bool))[None, None]  # causal: a token sees itself and earlier ones
        if attention_mask is not None:
            mask = mask & attention_mask.astype(bool)[:, None, None, :]
        hidden = [x]
        for i in range(self.num_hidden_layers):
            layer = _Layer(
                self.num_attention_heads, self.intermediate_size, self.hidden_act, self.layer_norm_eps, dt,
                name=f"encoder.layers.{i}",
            )  # fmt: skip
            x = layer(x, mask)
            hidden.append(x)
        norm = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=dt, use_fast_variance=False, name="final_layer_norm")
        x = norm(x)
        if self.eos_token_id == 2:  # checkpoints before the eos id was fixed: the highest id is end-of-text
            eos = jnp.argmax(input_ids, axis=-1)
        else:
            eos = jnp.argmax((input_ids == self.eos_token_id).astype(jnp.int32), axis=-1)
        pooled = x[jnp.arange(b), eos]
        return FlaxCLIPTextOutput(x, pooled, tuple(hidden) if output_hidden_states else None)
