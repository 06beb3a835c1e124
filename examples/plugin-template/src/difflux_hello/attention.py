"""The ``hello-chunked`` attention backend: exact attention, computed a block of queries at a time.

Peak memory for the scores is ``batch * heads * chunk * seq_k`` instead of ``... * seq_q * seq_k``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["CHUNK", "chunked_attention"]

#: Queries per block.
CHUNK = 64


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """``softmax(q kᵀ · scale + mask) v`` over blocks of :data:`CHUNK` queries (Vaswani et al. 2017, eq. 1).

    :param q: ``(batch, heads, seq_q, head_dim)``; ``k`` ``(batch, heads, seq_k, head_dim)``;
        ``v`` ``(batch, heads, seq_k, head_dim_v)``; any float dtype (half types computed in float32).
    :param attn_mask: broadcastable to ``(batch, heads, seq_q, seq_k)``; bool keeps ``True``, float is added.
    :param scale: score scale, ``1 / sqrt(head_dim)`` when ``None``.
    :param is_causal: key ``j`` is seen by query ``i`` only when ``j <= i``.
    :return: ``(batch, heads, seq_q, head_dim_v)`` in ``q``'s dtype; rows that see no key are zeros.
    """
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    n_q, n_k = q.shape[-2], k.shape[-2]
    kc, vc = k.to(compute), v.to(compute)
    if attn_mask is not None:
        attn_mask = attn_mask.expand(*attn_mask.shape[:-2], n_q, n_k) if attn_mask.dim() >= 2 else attn_mask
    blocks = []
    for start in range(0, n_q, CHUNK):
        stop = min(start + CHUNK, n_q)
        scores = torch.matmul(q[..., start:stop, :].to(compute), kc.transpose(-2, -1)) * scale
        if is_causal:
            rows = torch.arange(start, stop, device=q.device)[:, None]
            scores = scores.masked_fill(torch.arange(n_k, device=q.device) > rows, float("-inf"))
        if attn_mask is not None:
            part = attn_mask[..., start:stop, :]
            scores = scores.masked_fill(~part, float("-inf")) if part.dtype == torch.bool else scores + part.to(compute)
        weights = torch.softmax(scores, dim=-1)
        weights = weights.masked_fill(torch.isneginf(scores).all(dim=-1, keepdim=True), 0.0)
        blocks.append(torch.matmul(weights, vc))
    return torch.cat(blocks, dim=-2).to(q.dtype)
