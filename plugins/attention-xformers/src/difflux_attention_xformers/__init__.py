"""difflux plugin attention-xformers: xFormers' ``memory_efficient_attention`` as the ``xformers`` backend."""

from __future__ import annotations

__all__ = ["BACKEND_NAME", "INSTALL", "PRIORITY"]

#: The name users select the backend by; ``enable_xformers_memory_efficient_attention`` selects it.
BACKEND_NAME = "xformers"
#: Below ``sdpa`` (100): never chosen automatically while SDPA is installed, as in Diffusers.
PRIORITY = 60
#: What brings the kernel library.
INSTALL = "difflux-attention-xformers[xformers]"
