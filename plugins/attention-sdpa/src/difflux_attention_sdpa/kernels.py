"""SDPA's sub-kernels as named backends, and PyTorch's ``flex_attention``.

``sdpa`` lets torch pick a kernel; these pin one, through :func:`torch.nn.attention.sdpa_kernel`:

- ``sdpa-flash``: ``SDPBackend.FLASH_ATTENTION`` (FlashAttention-2, Dao 2023). CUDA sm80+:
  fp16/bf16, head dim <= 256, no mask; CPU (torch's CPU flash kernel): any float dtype, masks.
- ``sdpa-efficient``: ``SDPBackend.EFFICIENT_ATTENTION`` (the cutlass kernel from xFormers;
  Rabe & Staats 2021). CUDA: fp16/bf16/fp32, head dim a multiple of 8, masks.
- ``sdpa-cudnn``: ``SDPBackend.CUDNN_ATTENTION`` (cuDNN fused attention). CUDA sm80+: fp16/bf16,
  head dim <= 128 and a multiple of 8, no mask.
- ``sdpa-math``: ``SDPBackend.MATH`` (torch's composite reference). Anywhere.
- ``flex``: :func:`torch.nn.attention.flex_attention.flex_attention` (Dong et al. 2024, "Flex
  Attention"). Anywhere; compiled (fused) on CUDA, eager elsewhere (scores materialised).

The constraints here are the documented ones of torch 2.4+; if torch still finds no kernel
(``No available kernel``), the call raises :class:`~difflux.attention.AttentionBackendError`
with torch's reason, never a silent fallback.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from difflux.attention import AttentionBackendError
from torch.nn.attention import SDPBackend, sdpa_kernel

from .kernel import sdpa_attention

__all__ = [
    "cudnn_accepts",
    "efficient_accepts",
    "flash_accepts",
    "flex_accepts",
    "flex_attention",
    "sdpa_cudnn",
    "sdpa_efficient",
    "sdpa_flash",
    "sdpa_math",
]

_HALF = (torch.float16, torch.bfloat16)


def _pinned(name: str, backend: SDPBackend) -> Callable[..., torch.Tensor]:
    def run(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        scale: float | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        with warnings.catch_warnings(record=True) as seen, sdpa_kernel(backend):
            warnings.simplefilter("always")
            try:
                return sdpa_attention(q, k, v, attn_mask, scale, is_causal)
            except RuntimeError as exc:
                if "kernel" not in str(exc) and "backend" not in str(exc):
                    raise
                why = "; ".join(str(w.message).strip() for w in seen) or str(exc)
                raise AttentionBackendError(
                    f"attention backend {name!r} (torch {backend.name}) cannot run these inputs "
                    f"(q {tuple(q.shape)} {q.dtype} on {q.device.type}, mask "
                    f"{'none' if attn_mask is None else tuple(attn_mask.shape)}): {why}"
                ) from exc

    run.__name__ = run.__qualname__ = name.replace("-", "_")
    run.__doc__ = (
        f"Attention with torch's ``{backend.name}`` SDPA kernel only; arguments and result as "
        ":func:`difflux.attention.attention` (q, k, v ``(batch, heads, seq, head_dim)``).\n\n"
        ":raises AttentionBackendError: torch has no such kernel for these inputs (its reason included)."
    )
    return run


sdpa_flash = _pinned("sdpa-flash", SDPBackend.FLASH_ATTENTION)
sdpa_efficient = _pinned("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)
sdpa_cudnn = _pinned("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)
sdpa_math = _pinned("sdpa-math", SDPBackend.MATH)


# -- availability and per-input checks (registered as probe= / accepts=) ---------------------


def flash_accepts(q: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> str | None:
    """On CUDA the flash kernel takes fp16/bf16, head dim <= 256 and no mask (CPU: anything)."""
    if q.device.type != "cuda":
        return None
    if q.dtype not in _HALF:
        return f"takes dtypes ['bfloat16', 'float16'] on cuda, not {q.dtype}"
    if attn_mask is not None:
        return "takes no attention mask on cuda"
    if q.shape[-1] > 256:
        return f"takes head dim up to 256 on cuda, not {q.shape[-1]}"
    return None


def efficient_accepts(q: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> str | None:
    """The memory-efficient kernel wants a head dim that is a multiple of 8."""
    if q.shape[-1] % 8:
        return f"takes head dims that are multiples of 8, not {q.shape[-1]}"
    return None


def cudnn_accepts(q: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> str | None:
    """cuDNN attention: head dim <= 128 and a multiple of 8."""
    if q.shape[-1] > 128:
        return f"takes head dim up to 128, not {q.shape[-1]}"
    return efficient_accepts(q, attn_mask, is_causal)


def flex_accepts(q: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> str | None:
    """Compiled (CUDA) flex attention wants a power-of-two head dim of at least 16."""
    d = q.shape[-1]
    if q.device.type == "cuda" and (d < 16 or d & (d - 1)):
        return f"takes power-of-two head dims >= 16 on cuda, not {d}"
    return None


# -- flex_attention ----------------------------------------------------------------------------


@functools.cache
def _flex(compiled: bool) -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention as flex

    return torch.compile(flex, dynamic=False) if compiled else flex  # type: ignore[return-value]


def flex_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    *,
    compile: bool | None = None,
) -> torch.Tensor:
    """Attention through ``flex_attention``, the mask and causal flag as a ``score_mod``.

    :param q: ``(batch, heads, seq_q, head_dim)``; ``k``, ``v`` ``(batch, heads, seq_k, ...)``.
    :param attn_mask: broadcastable to ``(batch, heads, seq_q, seq_k)``: a float mask is added to
        the scores, a bool one sends ``False`` positions to ``-inf``.
    :param is_causal: key ``j`` is seen by query ``i`` when ``j <= i`` (top-left aligned).
    :param compile: run the ``torch.compile``d kernel (the fused one); default: on CUDA only.
    :return: ``(batch, heads, seq_q, head_dim_v)`` in the dtype of ``q``. Rows that see no key are 0.
    """
    b, h, n_q, _ = q.shape
    n_k = k.shape[-2]
    bias: torch.Tensor | None = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bias = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, float("-inf"))
        else:
            bias = attn_mask.to(q.dtype)
        bias = bias.expand(b, h, n_q, n_k)
    score_mod: Any = None
    if bias is not None and is_causal:
        full = bias

        def score_mod(score: Any, bi: Any, hi: Any, qi: Any, ki: Any) -> Any:
            return torch.where(ki <= qi, score + full[bi, hi, qi, ki], float("-inf"))

    elif bias is not None:
        full = bias

        def score_mod(score: Any, bi: Any, hi: Any, qi: Any, ki: Any) -> Any:
            return score + full[bi, hi, qi, ki]

    elif is_causal:

        def score_mod(score: Any, bi: Any, hi: Any, qi: Any, ki: Any) -> Any:
            return torch.where(ki <= qi, score, float("-inf"))

    run = _flex(q.device.type == "cuda" if compile is None else compile)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = run(q, k, v, score_mod=score_mod, scale=scale)
    return out  # type: ignore[no-any-return]
