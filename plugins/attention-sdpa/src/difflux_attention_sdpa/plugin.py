"""Entry point of the attention-sdpa plugin: registers through the difflux hooks.

Importing this module must stay cheap (no torch): the kernel is registered as a lazy reference.
"""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterAttentionBackend

from . import BACKEND_NAME, PRIORITY


@hookimpl
def difflux_register_attention_backends(register: RegisterAttentionBackend) -> None:
    # SDPA picks a fused kernel (flash, memory-efficient, cuDNN) when one fits and falls back
    # to its own math kernel otherwise, so it accepts every device, dtype, mask and head dim.
    register(BACKEND_NAME, "difflux_attention_sdpa.kernel:sdpa_attention", priority=PRIORITY, requires=("torch",))
