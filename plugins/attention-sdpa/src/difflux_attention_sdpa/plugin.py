"""Entry point of the attention-sdpa plugin: registers through the difflux hooks.

Importing this module must stay cheap (no torch): the kernel is registered as a lazy reference.
"""

from __future__ import annotations

from difflux import hookimpl
from difflux.attention_plugins import cuda_reason
from difflux.registry import RegisterAttentionBackend

from . import BACKEND_NAME, PRIORITY


def cudnn_reason() -> str | None:
    """``None`` with a CUDA device of compute capability 8.0+ and cuDNN, else why not."""
    why = cuda_reason((8, 0))
    if why is None:
        import torch

        if not torch.backends.cudnn.is_available():
            why = "needs cuDNN, which this torch build does not have"
    return why


@hookimpl
def difflux_register_attention_backends(register: RegisterAttentionBackend) -> None:
    # SDPA picks a fused kernel (flash, memory-efficient, cuDNN) when one fits and falls back
    # to its own math kernel otherwise, so it accepts every device, dtype, mask and head dim.
    register(BACKEND_NAME, "difflux_attention_sdpa.kernel:sdpa_attention", priority=PRIORITY, requires=("torch",))
    # The sub-kernels, pinned: chosen by name only (priorities below sdpa, which picks among them).
    k = "difflux_attention_sdpa.kernels"
    register(
        "sdpa-flash",
        f"{k}:sdpa_flash",
        priority=90,
        devices={"cuda", "cpu"},
        dtypes={"float16", "bfloat16", "float32", "float64"},
        accepts=f"{k}:flash_accepts",
        requires=("torch",),
    )
    register(
        "sdpa-efficient",
        f"{k}:sdpa_efficient",
        priority=80,
        devices={"cuda"},
        dtypes={"float16", "bfloat16", "float32"},
        accepts=f"{k}:efficient_accepts",
        probe=cuda_reason,
        requires=("torch",),
    )
    register(
        "sdpa-cudnn",
        f"{k}:sdpa_cudnn",
        priority=70,
        devices={"cuda"},
        dtypes={"float16", "bfloat16"},
        max_head_dim=128,
        supports_mask=False,  # torch's cuDNN path takes masks only in recent versions / cuDNN builds
        accepts=f"{k}:cudnn_accepts",
        probe=cudnn_reason,
        requires=("torch",),
    )
    register("sdpa-math", f"{k}:sdpa_math", priority=10, requires=("torch",))
    register(
        "flex",
        f"{k}:flex_attention",
        priority=5,
        dtypes={"float16", "bfloat16", "float32", "float64"},
        accepts=f"{k}:flex_accepts",
        requires=("torch",),
    )
