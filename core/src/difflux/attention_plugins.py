"""Helpers for attention-backend plugins: availability probes and mask conversions.

A backend plugin registers ``probe=`` (why the backend cannot run in this process) and
``accepts=`` (per-input checks the fixed constraints cannot state); these build the common ones,
so every plugin words its refusals the same way. Importing this module does not import torch.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["additive_bias", "cuda_reason", "missing_module_reason"]


def missing_module_reason(module: str, install: str) -> str | None:
    """``None`` when ``module`` can be imported, else a reason naming what to install.

    :param module: the import name (``"xformers"``).
    :param install: the requirement that brings it (``"difflux-attention-xformers[xformers]"``).
    """
    if importlib.util.find_spec(module) is None:
        return f"needs the module {module!r}, which is not installed: pip install {install!r}"
    return None


def cuda_reason(min_capability: tuple[int, int] | None = None) -> str | None:
    """``None`` when torch sees a CUDA device (of at least ``min_capability``), else why not."""
    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA device; torch.cuda.is_available() is False in this process"
    if min_capability is not None:
        cap = torch.cuda.get_device_capability()
        if cap < min_capability:
            want = ".".join(map(str, min_capability))
            return f"needs a CUDA device of compute capability {want} or newer; this one is {cap[0]}.{cap[1]}"
    return None


def additive_bias(
    attn_mask: torch.Tensor | None,
    dtype: torch.dtype,
    n_q: int,
    n_k: int,
    *,
    is_causal: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor | None:
    """A mask in the semantics of :func:`difflux.attention.attention` as a float bias to add to the scores.

    :param attn_mask: broadcastable to ``(batch, heads, n_q, n_k)``; bool ``False`` becomes ``-inf``,
        a float mask is cast to ``dtype``.
    :param is_causal: also send key ``j > i`` to ``-inf`` for query ``i`` (top-left aligned).
    :param device: where a causal-only bias is made (a mask's own device otherwise).
    :return: a ``dtype`` tensor of the mask's (broadcast) shape, or ``None`` when there is nothing to add.
    """
    import torch

    if attn_mask is None and not is_causal:
        return None
    device = attn_mask.device if attn_mask is not None else device
    if attn_mask is None:
        bias = torch.zeros(n_q, n_k, dtype=dtype, device=device)
    elif attn_mask.dtype == torch.bool:
        bias = torch.zeros(attn_mask.shape, dtype=dtype, device=device).masked_fill(~attn_mask, float("-inf"))
    else:
        bias = attn_mask.to(dtype)
    if is_causal:
        keep = torch.ones(n_q, n_k, dtype=torch.bool, device=bias.device).tril()
        bias = bias.masked_fill(~keep, float("-inf"))
    return bias
