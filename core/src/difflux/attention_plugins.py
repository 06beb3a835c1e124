"""Helpers for attention-backend plugins: availability probes and mask conversions.

A backend plugin registers ``probe=`` (why the backend cannot run in this process) and
``accepts=`` (per-input checks the fixed constraints cannot state); these build the common ones,
so every plugin words its refusals the same way. Importing this module does not import torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["additive_bias", "cuda_reason", "import_kernel", "missing_module_reason", "require_plain_inputs"]


def missing_module_reason(module: str, install: str) -> str | None:
    """``None`` when ``module`` can be imported, else a reason naming what to install.

    :param module: the import name (``"xformers"``).
    :param install: the requirement that brings it (``"difflux-attention-xformers[xformers]"``).
    """
    if importlib.util.find_spec(module) is None:
        return f"needs the module {module!r}, which is not installed: pip install {install!r}"
    return None


def _cuda_ruled_out_without_torch() -> str | None:
    """Why there can be no CUDA device, when that is certain without importing torch (else ``None``).

    ``difflux plugins`` stays torch-free on CPU machines: a ``+cpu`` torch build never has CUDA,
    and on Linux no NVIDIA driver means no CUDA device. Anything else imports torch and asks it.
    """
    import sys
    from importlib import metadata

    if "torch" in sys.modules:
        return None
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "needs torch, which is not installed"
    if version.endswith("+cpu"):
        return f"needs a CUDA device; this torch build ({version}) has no CUDA"
    if sys.platform == "linux" and "rocm" not in version and not os.path.exists("/proc/driver/nvidia/version"):
        return "needs a CUDA device; this machine has no NVIDIA driver"
    return None


def cuda_reason(min_capability: tuple[int, int] | None = None) -> str | None:
    """``None`` when torch sees a CUDA device (of at least ``min_capability``), else why not.

    Imports torch only when the answer is not certain without it (see ``_cuda_ruled_out_without_torch``).
    """
    why = _cuda_ruled_out_without_torch()
    if why is not None:
        return why
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


def import_kernel(module: str, name: str | None, backend: str, install: str) -> Any:
    """``module.name`` (or the module itself when ``name`` is ``None``), imported now: kernel
    libraries load on first use, not with the plugin.

    :raises AttentionBackendError: the module is missing, naming ``install`` (the plugin's extra).
    """
    from .attention import AttentionBackendError

    try:
        found = importlib.import_module(module)
        return found if name is None else getattr(found, name)
    except (ImportError, AttributeError) as exc:
        what = module if name is None else f"{module}.{name}"
        raise AttentionBackendError(
            f"attention backend {backend!r} needs {what}: pip install {install!r} ({exc})"
        ) from exc


def require_plain_inputs(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
) -> None:
    """Refuse what kernels without masks and with bottom-right causal alignment get wrong.

    Such kernels (flash-attn, SageAttention) take no mask, align ``is_causal`` to the bottom right
    when ``seq_q != seq_k`` (difflux's is top-left) and need q and v of one head dim.

    :raises AttentionBackendError: naming ``backend`` and what to do.
    """
    from .attention import AttentionBackendError

    if attn_mask is not None:
        raise AttentionBackendError(f"attention backend {backend!r} takes no attention mask")
    if is_causal and q.shape[-2] != k.shape[-2]:
        raise AttentionBackendError(
            f"attention backend {backend!r} aligns causal masks bottom-right; difflux's causal attention is "
            f"top-left, so it needs seq_q == seq_k (got {q.shape[-2]} and {k.shape[-2]}); use sdpa for this call"
        )
    if v.shape[-1] != q.shape[-1]:
        raise AttentionBackendError(
            f"attention backend {backend!r} needs equal q and v head dims (got {q.shape[-1]} and {v.shape[-1]})"
        )
