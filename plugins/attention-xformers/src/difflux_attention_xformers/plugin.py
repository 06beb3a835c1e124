"""Entry point of the attention-xformers plugin. Cheap to import: nothing heavy loads until first use."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterAttentionBackend

from . import BACKEND_NAME, PRIORITY


@hookimpl
def difflux_register_attention_backends(register: RegisterAttentionBackend) -> None:
    # xFormers dispatches among its operators (cutlass, flash, ck...) and takes bias tensors, so
    # masks and causal are fine; it runs on CUDA only. A shape no operator takes raises with
    # xFormers' own reasons (AttentionBackendError).
    register(
        BACKEND_NAME,
        "difflux_attention_xformers.kernel:xformers_attention",
        priority=PRIORITY,
        devices={"cuda"},
        dtypes={"float16", "bfloat16", "float32"},
        probe="difflux_attention_xformers.kernel:unavailable_reason",
    )
