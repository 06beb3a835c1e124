"""The ``sage`` backend: ``sageattention.sageattn`` behind difflux's attention API.

SageAttention: Zhang et al., "SageAttention: Accurate 8-Bit Attention for Plug-and-play
Inference Acceleration" (ICLR 2025): q and k quantised to INT8 (k smoothed by its mean), the
softmax-times-v product in fp16. An approximation: expect errors of about 1e-2 against exact
attention, more than fp16 kernels.
"""

from __future__ import annotations

import torch
from difflux.attention_plugins import import_kernel, require_plain_inputs

from . import BACKEND_NAME, HEAD_DIMS, INSTALL

__all__ = ["accepts", "sage_attention"]


def accepts(q: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> str | None:
    """SageAttention's kernels exist for head dims 64, 96 and 128 only."""
    if q.shape[-1] not in HEAD_DIMS:
        return f"takes head dims {list(HEAD_DIMS)}, not {q.shape[-1]}"
    return None


def sage_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Attention with ``sageattn`` in its ``"HND"`` layout (difflux's own: no transposes).

    :param q: ``(batch, heads, seq_q, head_dim)`` fp16/bf16 on CUDA, head dim 64/96/128; ``k``,
        ``v`` ``(batch, heads, seq_k, head_dim)``.
    :param attn_mask: must be ``None`` (SageAttention takes no mask).
    :param scale: ``sm_scale`` (``1 / sqrt(head_dim)`` when ``None``).
    :param is_causal: top-left causal; only with ``seq_q == seq_k`` (see ``require_plain_inputs``).
    :return: ``(batch, heads, seq_q, head_dim)`` in the dtype of ``q`` (approximate; see the module).
    :raises AttentionBackendError: a mask, causal with unequal lengths, different q/v head dims, or
        sageattention missing.
    """
    require_plain_inputs(BACKEND_NAME, q, k, v, attn_mask, is_causal)
    sageattn = import_kernel("sageattention", "sageattn", BACKEND_NAME, INSTALL)
    out = sageattn(q, k, v, tensor_layout="HND", is_causal=is_causal, sm_scale=scale)
    return out  # type: ignore[no-any-return]
