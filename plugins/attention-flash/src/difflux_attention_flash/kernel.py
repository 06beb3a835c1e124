"""The ``flash`` backend: ``flash_attn.flash_attn_func`` behind difflux's attention API.

FlashAttention-2: Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning" (2023); exact attention, tiled so the scores never reach GPU main memory.
"""

from __future__ import annotations

import torch
from difflux.attention_plugins import import_kernel, require_plain_inputs

from . import BACKEND_NAME, INSTALL

__all__ = ["flash_attention"]


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Attention with ``flash_attn_func``.

    :param q: ``(batch, heads, seq_q, head_dim)`` fp16/bf16 on CUDA, head dim <= 256; ``k``, ``v``
        ``(batch, heads, seq_k, head_dim)`` (same head dim). Passed as ``(batch, seq, heads, dim)`` views.
    :param attn_mask: must be ``None`` (flash-attn takes no mask; the registration says so).
    :param scale: ``softmax_scale`` (``1 / sqrt(head_dim)`` when ``None``).
    :param is_causal: top-left causal; only with ``seq_q == seq_k`` (flash-attn aligns it bottom-right).
    :return: ``(batch, heads, seq_q, head_dim)`` in the dtype of ``q``.
    :raises AttentionBackendError: a mask, causal with unequal lengths, different q/v head dims,
        or flash-attn missing.
    """
    require_plain_inputs(BACKEND_NAME, q, k, v, attn_mask, is_causal)
    flash_attn_func = import_kernel("flash_attn", "flash_attn_func", BACKEND_NAME, INSTALL)
    out = flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.0, softmax_scale=scale, causal=is_causal
    )
    return out.transpose(1, 2)  # type: ignore[no-any-return]
