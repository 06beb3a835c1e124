"""The ``xformers`` backend: ``xformers.ops.memory_efficient_attention`` behind difflux's attention API.

Memory-efficient attention after Rabe & Staats, "Self-attention Does Not Need O(n²) Memory"
(2021), as implemented by xFormers (Lefaudeux et al.), which dispatches to its cutlass,
FlashAttention or composable-kernel operators.
"""

from __future__ import annotations

from typing import Any

import torch
from difflux.attention import AttentionBackendError
from difflux.attention_plugins import additive_bias, import_kernel

from . import BACKEND_NAME, INSTALL

__all__ = ["aligned_bias", "xformers_attention"]


def aligned_bias(bias: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """``bias`` broadcast to ``shape`` ``(batch, heads, seq_q, seq_k)``, its rows stored 8-element aligned.

    xFormers' kernels read a bias tensor with a row stride that is a multiple of 8; the storage is
    padded, the returned view is exactly ``shape`` (size-1 dims stay broadcast, stride 0).
    """
    bias = bias.reshape((1,) * (4 - bias.ndim) + tuple(bias.shape))
    n_k = bias.shape[-1]
    padded = -(-n_k // 8) * 8
    store = bias.new_zeros(*bias.shape[:-1], padded)
    store[..., :n_k] = bias
    return store[..., :n_k].expand(shape)


def xformers_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    *,
    attention_op: Any = None,
) -> torch.Tensor:
    """Attention with ``xformers.ops.memory_efficient_attention``.

    :param q: ``(batch, heads, seq_q, head_dim)`` on CUDA, fp16/bf16/fp32; ``k``, ``v``
        ``(batch, heads, seq_k, ...)``. Passed to xFormers as ``(batch, seq, heads, head_dim)`` views.
    :param attn_mask: broadcastable to ``(batch, heads, seq_q, seq_k)``; becomes an additive bias
        (bool ``False`` is ``-inf``), combined with ``is_causal`` when both are given.
    :param is_causal: top-left aligned causal attention (xFormers' ``LowerTriangularMask``).
    :param attention_op: an xFormers operator passed through as ``op=`` (``None``: xFormers picks).
    :return: ``(batch, heads, seq_q, head_dim_v)`` in the dtype of ``q``; query rows that see no
        key are zeros.
    :raises AttentionBackendError: xFormers is missing, or no operator of it takes these inputs.
    """
    ops = import_kernel("xformers.ops", None, BACKEND_NAME, INSTALL)
    b, h, n_q, _ = q.shape
    n_k = k.shape[-2]
    bias: Any = None
    blind = None
    if attn_mask is not None:
        full = additive_bias(attn_mask, q.dtype, n_q, n_k, is_causal=is_causal)
        if full is None:
            raise RuntimeError("xformers_attention: internal check failed: full is not None")
        bias = aligned_bias(full, (b, h, n_q, n_k))
        blind = torch.isneginf(full).all(dim=-1, keepdim=True)  # rows with no visible key
        blind = blind if bool(blind.any()) else None
    elif is_causal:
        bias = ops.LowerTriangularMask()
    try:
        out = ops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias, scale=scale, op=attention_op
        )
    except (NotImplementedError, ValueError) as exc:
        raise AttentionBackendError(
            f"attention backend {BACKEND_NAME!r}: xFormers has no operator for q {tuple(q.shape)} {q.dtype} "
            f"on {q.device.type} (mask {'none' if attn_mask is None else tuple(attn_mask.shape)}, "
            f"op {attention_op!r}): {exc}"
        ) from exc
    out = out.transpose(1, 2)
    if blind is not None:  # difflux's contract: a query that sees no key gives zeros
        out = out.masked_fill(blind.expand(b, h, n_q, 1), 0.0)
    return out  # type: ignore[no-any-return]
