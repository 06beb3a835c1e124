"""Entry point of the attention-sage plugin. Cheap to import: sageattention loads on first use."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterAttentionBackend

from . import BACKEND_NAME, PRIORITY


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
        probe="difflux_attention_sage.kernel:unavailable_reason",
    )
