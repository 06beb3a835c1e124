"""Sliced attention: the ``sliced`` backend behind ``enable_attention_slicing``.

Attention is computed a few heads at a time (per batch element), and optionally a chunk of
queries at a time, by another backend (the *inner* one), and written into one output tensor.
The scores of only one slice, ``(slice heads, query chunk, seq_k)``, exist at once, instead of
``(batch, heads, seq_q, seq_k)``: peak memory falls roughly by ``batch * heads / slice_size``
for kernels that materialise the scores (the reference, SDPA's math kernel, eager
``flex_attention``), at the cost of more, smaller kernel launches. Each output element is computed
by the same arithmetic as the unsliced call, so the result equals it (float32: within 1e-5).

The technique is the "sliced attention" of the Stable Diffusion community (Diffusers'
``SlicedAttnProcessor``); query chunking is the chunked evaluation of Rabe & Staats,
"Self-attention Does Not Need O(n²) Memory" (2021), without its log-sum-exp merge (each chunk
sees every key, so no merge is needed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch

from .attention import AttentionBackendError, attention_backend_spec, available_attention_backends

__all__ = ["SLICED_BACKEND", "SliceSize", "check_slice_size", "heads_per_slice", "sliced_attention"]

#: The registered name of the backend (core's built-in plugin registers it).
SLICED_BACKEND = "sliced"

#: ``"auto"`` (half the heads), ``"max"`` (one head at a time), or a number of heads per slice.
SliceSize = Literal["auto", "max"] | int


def check_slice_size(slice_size: Any, heads: int | None = None, *, where: str = "slice_size") -> SliceSize:
    """Validate ``slice_size`` (before any model runs) and return it.

    :param slice_size: ``"auto"``, ``"max"`` or a positive ``int``.
    :param heads: the most heads per slice allowed (a model's fewest heads of any attention
        layer); an ``int`` above it is refused.
    :raises ValueError: naming ``where`` and the accepted values.
    """
    if slice_size in ("auto", "max"):
        return slice_size  # type: ignore[no-any-return]
    if isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1:
        raise ValueError(f'{where} must be "auto", "max" or a positive int (heads per slice), not {slice_size!r}')
    if heads is not None and slice_size > heads:
        raise ValueError(
            f"{where}={slice_size} is more heads than the attention layers have (up to {heads} fit every layer); "
            f'use at most {heads}, or "auto" / "max"'
        )
    return slice_size


def heads_per_slice(slice_size: SliceSize, heads: int) -> int:
    """Heads computed together for a layer with ``heads`` heads: ``"auto"`` ``heads // 2``
    (at least 1), ``"max"`` 1, an int itself (capped at ``heads``)."""
    if slice_size == "auto":
        return max(1, heads // 2)
    if slice_size == "max":
        return 1
    return min(int(slice_size), heads)


def _inner_kernel(
    q: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool, inner: str | None
) -> Callable[..., torch.Tensor]:
    """The kernel that computes each slice, checked against the slices' inputs.

    Called directly, not through :func:`~difflux.attention.attention`, so an outer
    ``attention_backend("sliced")`` context cannot send the slices back here.
    """
    if inner is not None and str(inner) == SLICED_BACKEND:
        raise AttentionBackendError("the sliced attention backend cannot use itself as its inner backend")
    names = [inner] if inner is not None else [n for n in available_attention_backends() if n != SLICED_BACKEND]
    for name in names:
        spec = attention_backend_spec(name)
        why = spec.available() or spec.check(q, attn_mask, is_causal)
        if why is None:
            fn = spec.load()
            options = getattr(name, "options", None)
            return functools.partial(fn, **options) if options else fn  # type: ignore[no-any-return]
        if inner is not None:
            raise AttentionBackendError(
                f"sliced attention: its inner backend {name!r} (plugin {spec.plugin!r}) cannot take these slices: {why}"
            )
    raise AttentionBackendError("sliced attention found no other backend that accepts these inputs")


def _piece(mask: torch.Tensor, b: int, h: slice, rows: slice) -> torch.Tensor:
    """The part of a mask broadcastable to ``(batch, heads, seq_q, seq_k)`` for one slice."""
    return mask[
        slice(b, b + 1) if mask.shape[0] > 1 else slice(0, 1),
        h if mask.shape[1] > 1 else slice(0, 1),
        rows if mask.shape[2] > 1 else slice(0, 1),
    ]


def sliced_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    *,
    slice_size: SliceSize | None = "auto",
    query_chunk_size: int | None = None,
    inner: str | None = None,
) -> torch.Tensor:
    """Attention computed slice by slice through an inner backend.

    :param q: ``(batch, heads, seq_q, head_dim)``; ``k`` ``(batch, heads, seq_k, head_dim)``;
        ``v`` ``(batch, heads, seq_k, head_dim_v)``; any float dtype and device the inner backend takes.
    :param attn_mask: broadcastable to ``(batch, heads, seq_q, seq_k)`` (bool keeps ``True``,
        float is added); sliced along with the inputs.
    :param scale: score scale (``1 / sqrt(head_dim)`` when ``None``), passed to the inner backend.
    :param is_causal: top-left aligned causal masking; with query chunks it becomes an explicit
        boolean mask per chunk.
    :param slice_size: heads per slice (see :func:`heads_per_slice`); ``None`` keeps all heads
        together (only query chunking, if any).
    :param query_chunk_size: queries per chunk; ``None``: all queries at once.
    :param inner: the backend computing each slice; ``None``: the first backend in automatic order
        (other than this one) that accepts the inputs.
    :return: ``(batch, heads, seq_q, head_dim_v)`` in the dtype of ``q``.
    :raises ValueError: a bad ``slice_size`` / ``query_chunk_size``.
    :raises AttentionBackendError: no inner backend fits, or the named one is unavailable or
        rejects the slices (its constraint named).
    """
    batch, heads, n_q, _ = q.shape
    per = heads if slice_size is None else heads_per_slice(check_slice_size(slice_size), heads)
    if query_chunk_size is not None and (
        isinstance(query_chunk_size, bool) or not isinstance(query_chunk_size, int) or query_chunk_size < 1
    ):
        raise ValueError(f"query_chunk_size must be a positive int or None, not {query_chunk_size!r}")
    chunk = n_q if query_chunk_size is None else min(query_chunk_size, n_q)
    chunked_causal = is_causal and chunk < n_q  # each chunk then gets its part of the causal mask
    probe_mask = attn_mask if attn_mask is not None or not chunked_causal else torch.ones(1, 1, dtype=torch.bool)
    kernel = _inner_kernel(q, probe_mask, is_causal and not chunked_causal, inner)
    if per >= heads and chunk >= n_q:
        return kernel(q, k, v, attn_mask, scale, is_causal)
    mask = attn_mask
    if mask is not None and mask.ndim < 4:
        mask = mask.reshape((1,) * (4 - mask.ndim) + tuple(mask.shape))
    # (batch, seq, heads, dim) storage seen as (batch, heads, seq, dim), as SDPA returns for the
    # head-split projections models pass: their merge back to (batch, seq, heads * dim) is then a view.
    out = q.new_empty(batch, n_q, heads, v.shape[-1]).transpose(1, 2)
    keys = torch.arange(k.shape[-2], device=q.device)
    for b in range(batch):
        for h0 in range(0, heads, per):
            h = slice(h0, min(h0 + per, heads))
            for r0 in range(0, n_q, chunk):
                rows = slice(r0, min(r0 + chunk, n_q))
                piece = None if mask is None else _piece(mask, b, h, rows)
                if chunked_causal:
                    keep = keys[None, :] <= torch.arange(rows.start, rows.stop, device=q.device)[:, None]
                    if piece is None or piece.dtype == torch.bool:
                        piece = keep if piece is None else piece & keep
                    else:
                        piece = piece.masked_fill(~keep, float("-inf"))
                qs, ks, vs = q[b : b + 1, h, rows], k[b : b + 1, h], v[b : b + 1, h]
                out[b : b + 1, h, rows] = kernel(qs, ks, vs, piece, scale, is_causal and not chunked_causal)
    return out
