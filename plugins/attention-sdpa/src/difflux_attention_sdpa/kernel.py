"""The SDPA kernel behind the ``sdpa`` backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sdpa_attention"]


def sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Attention with the semantics of :func:`difflux.attention.attention`, via SDPA.

    Smooths over two differences between torch versions and dtypes: a float mask is cast to the
    query dtype, and ``is_causal`` together with a mask is folded into one boolean/float mask
    (older torch refuses the pair).
    """
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool and attn_mask.dtype != q.dtype:
            attn_mask = attn_mask.to(q.dtype)
        if is_causal:
            keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
            if attn_mask.dtype == torch.bool:
                attn_mask = attn_mask & keep
            else:
                attn_mask = attn_mask.masked_fill(~keep, float("-inf"))
            is_causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
