"""difflux plugin attention-flash: FlashAttention-2 (``flash-attn``) as the ``flash`` backend."""

from __future__ import annotations

__all__ = ["BACKEND_NAME", "INSTALL", "PRIORITY"]

#: The name users select the backend by.
BACKEND_NAME = "flash"
#: Below ``sdpa`` (100): chosen automatically only where SDPA is not installed.
PRIORITY = 70
#: What brings the kernel library.
INSTALL = "difflux-attention-flash[flash-attn]"
