"""difflux plugin attention-sage: SageAttention (``sageattention``) as the ``sage`` backend."""

from __future__ import annotations

__all__ = ["BACKEND_NAME", "HEAD_DIMS", "INSTALL", "PRIORITY"]

#: The name users select the backend by.
BACKEND_NAME = "sage"
#: Below core's ``reference`` (-100): SageAttention quantises q and k to 8 bits, so it is an
#: approximation, only ever used when chosen by name.
PRIORITY = -200
#: Head dims SageAttention's kernels are built for.
HEAD_DIMS = (64, 96, 128)
#: What brings the kernel library.
INSTALL = "difflux-attention-sage[sageattention]"
