"""Entry point of the attention-flash plugin. Cheap to import: flash-attn loads on first use."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterAttentionBackend

from . import BACKEND_NAME, PRIORITY


@hookimpl
def difflux_register_attention_backends(register: RegisterAttentionBackend) -> None:
    # flash_attn_func: CUDA sm80+, fp16/bf16, head dim <= 256, no mask; its causal mode is
    # bottom-right aligned, so the kernel refuses causal calls with unequal lengths.
    register(
        BACKEND_NAME,
        "difflux_attention_flash.kernel:flash_attention",
        priority=PRIORITY,
        devices={"cuda"},
        dtypes={"float16", "bfloat16"},
        supports_mask=False,
        max_head_dim=256,
        probe="difflux_attention_flash.kernel:unavailable_reason",
    )
