"""Entry point of the attention-xformers plugin. Cheap to import: nothing heavy loads until first use."""

from __future__ import annotations

from difflux import hookimpl
from difflux.attention_plugins import cuda_reason, missing_module_reason
from difflux.registry import RegisterAttentionBackend

from . import BACKEND_NAME, INSTALL, PRIORITY


def unavailable_reason() -> str | None:
    """Why the backend cannot run in this process (xFormers missing, no CUDA device), or ``None``.

    Imports no torch where CUDA is ruled out without it, so ``difflux plugins`` stays light.
    """
    return missing_module_reason("xformers", INSTALL) or cuda_reason()


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
        probe=unavailable_reason,
    )
