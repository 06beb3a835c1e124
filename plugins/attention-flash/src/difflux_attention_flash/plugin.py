"""Entry point of the attention-flash plugin. Cheap to import: flash-attn loads on first use."""

from __future__ import annotations

from difflux import hookimpl
from difflux.attention_plugins import cuda_reason, missing_module_reason
from difflux.registry import RegisterAttentionBackend

from . import BACKEND_NAME, INSTALL, PRIORITY


def unavailable_reason() -> str | None:
    """Why the backend cannot run in this process (flash-attn missing, no CUDA device of sm80+), or ``None``.

    Imports no torch where CUDA is ruled out without it, so ``difflux plugins`` stays light.
    """
    return missing_module_reason("flash_attn", INSTALL) or cuda_reason((8, 0))


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
        probe=unavailable_reason,
    )
