"""Entry point of the attention-sage plugin. Cheap to import: sageattention loads on first use."""

from __future__ import annotations

from difflux import hookimpl
from difflux.attention_plugins import cuda_reason, missing_module_reason
from difflux.registry import RegisterAttentionBackend

from . import BACKEND_NAME, INSTALL, PRIORITY


def unavailable_reason() -> str | None:
    """Why the backend cannot run in this process (sageattention missing, no CUDA device of sm80+), or ``None``.

    Imports no torch where CUDA is ruled out without it, so ``difflux plugins`` stays light.
    """
    return missing_module_reason("sageattention", INSTALL) or cuda_reason((8, 0))


@hookimpl
def difflux_register_attention_backends(register: RegisterAttentionBackend) -> None:
    # sageattn: CUDA sm80+, fp16/bf16, head dims 64/96/128, no mask; causal with equal lengths.
    register(
        BACKEND_NAME,
        "difflux_attention_sage.kernel:sage_attention",
        priority=PRIORITY,
        devices={"cuda"},
        dtypes={"float16", "bfloat16"},
        supports_mask=False,
        max_head_dim=128,
        accepts="difflux_attention_sage.kernel:accepts",
        probe=unavailable_reason,
    )
