"""Optimisations that change layout, weights or precision, not code: channels-last, fused
projections, CPU bf16 autocast."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from difflux.optimize import OptimizeContext, offload_reason

__all__ = ["ALLOCATOR_ADVICE", "channels_last", "cpu_allocator", "cpu_bf16_autocast", "cpu_supports_bf16", "fuse_qkv"]

#: What to set before Python starts so that large CPU activations are not page-faulted in again
#: on every call (glibc hands blocks above 32 MiB back to the kernel when they are freed).
ALLOCATOR_ADVICE = "MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184"


def channels_last(ctx: OptimizeContext) -> str | None:
    """Store 4-d weights channels-last (NHWC), the layout cuDNN and oneDNN convolutions run fastest in.

    Values are unchanged; convolutions then return channels-last activations, so the
    layout flows through the network without per-layer transposes.
    """
    if not any(isinstance(m, torch.nn.Conv2d) for m in ctx.model.modules()):
        return "the model has no 2-d convolution"
    ctx.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return None


def fuse_qkv(ctx: OptimizeContext) -> str | None:
    """Fuse the q/k/v (self attention) and k/v (cross attention) projections: one matmul instead of three."""
    # each attention layer's fuse_projections(), what the models' fuse_qkv_projections() calls
    layers = [m for m in ctx.model.modules() if callable(getattr(m, "fuse_projections", None))]
    if not layers:
        return f"{type(ctx.model).__name__} has no attention layer with fuse_projections()"
    why = offload_reason(ctx.model)
    if why is not None:
        return f"{why}; new fused weights would miss the offload hooks"
    for layer in layers:
        layer.fuse_projections()  # type: ignore[operator]
    return None


@functools.cache
def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic for oneDNN (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _to_dtype(out: Any, dtype: torch.dtype) -> Any:
    """``out`` with every floating tensor in it cast to ``dtype`` (tensors, tuples, lists, dicts, dataclasses)."""
    if isinstance(out, torch.Tensor):
        return out.to(dtype) if out.is_floating_point() else out
    if isinstance(out, tuple | list):
        return type(out)(_to_dtype(o, dtype) for o in out)
    if isinstance(out, dict):
        return {k: _to_dtype(v, dtype) for k, v in out.items()}
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return dataclasses.replace(
            out, **{f.name: _to_dtype(getattr(out, f.name), dtype) for f in dataclasses.fields(out)}
        )
    return out


class _AutocastForward:
    """``forward`` run under ``torch.autocast("cpu", bfloat16)``, outputs cast back to the model dtype."""

    def __init__(self, forward: Callable[..., Any], dtype: torch.dtype) -> None:
        self.inner = forward
        self.dtype = dtype

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.inner(*args, **kwargs)
        return _to_dtype(out, self.dtype)


def cpu_bf16_autocast(ctx: OptimizeContext) -> str | None:
    """Run a float32 model's matmuls and convolutions in bf16 on a CPU with native bf16 (mode ``"max"``).

    Trades precision (bf16 keeps 8 bits of mantissa) for about 2x on AVX512-BF16 / AMX CPUs;
    outputs come back in float32.
    """
    if ctx.dtype != torch.float32:
        return f"the model is {ctx.dtype}, not float32"
    if not cpu_supports_bf16():
        return "this CPU has no native bf16 (AVX512-BF16 or AMX); bf16 would be slower than float32"
    if isinstance(ctx.model.forward, _AutocastForward):
        return "already applied"
    ctx.model.forward = _AutocastForward(ctx.model.forward, ctx.dtype)  # type: ignore[method-assign]
    return None


def cpu_allocator(ctx: OptimizeContext) -> str | None:
    """Check (never set) the allocator settings that keep large CPU activations mapped between calls.

    Applies (changes nothing) when the process already runs with :data:`ALLOCATOR_ADVICE` or a
    preloaded jemalloc / tcmalloc; otherwise it is skipped with the advice as its reason.
    Environment variables are process-wide and read when the allocator starts: difflux never sets them.
    """
    import os

    preload = os.environ.get("LD_PRELOAD", "")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "jemalloc" in preload or "tcmalloc" in preload:
        return None
    return (
        f"advice only: start Python with {ALLOCATOR_ADVICE} (or LD_PRELOAD jemalloc / tcmalloc); "
        "large activations are then reused instead of page-faulted in on every call (docs/optimize.md)"
    )
