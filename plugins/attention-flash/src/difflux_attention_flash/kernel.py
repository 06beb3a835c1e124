"""The ``flash`` backend: ``flash_attn.flash_attn_func`` behind difflux's attention API.

FlashAttention-2: Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work
Partitioning" (2023); exact attention, tiled so the scores never reach GPU main memory.
"""

from __future__ import annotations

from typing import Any

import torch
from difflux.attention import AttentionBackendError
from difflux.attention_plugins import cuda_reason, missing_module_reason

from . import BACKEND_NAME, INSTALL

__all__ = ["flash_attention", "unavailable_reason"]


def unavailable_reason() -> str | None:
    """Why the backend cannot run here (flash-attn missing, no CUDA device of sm80+), or ``None``."""
    return missing_module_reason("flash_attn", INSTALL) or cuda_reason((8, 0))


def _flash_attn_func() -> Any:
    try:
        from flash_attn import flash_attn_func
    except ImportError as exc:
        raise AttentionBackendError(
            f"attention backend {BACKEND_NAME!r} needs flash-attn: pip install {INSTALL!r} ({exc})"
        ) from exc
    return flash_attn_func


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
    if attn_mask is not None:
        raise AttentionBackendError(f"attention backend {BACKEND_NAME!r} takes no attention mask")
    if is_causal and q.shape[-2] != k.shape[-2]:
        raise AttentionBackendError(
            f"attention backend {BACKEND_NAME!r}: flash-attn aligns causal masks bottom-right; difflux's causal "
            f"attention is top-left, so it needs seq_q == seq_k (got {q.shape[-2]} and {k.shape[-2]})"
        )
    if v.shape[-1] != q.shape[-1]:
        raise AttentionBackendError(
            f"attention backend {BACKEND_NAME!r} needs equal q and v head dims (got {q.shape[-1]} and {v.shape[-1]})"
        )
    out = _flash_attn_func()(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.0, softmax_scale=scale, causal=is_causal
    )
    return out.transpose(1, 2)  # type: ignore[no-any-return]
