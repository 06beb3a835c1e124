"""difflux-optimize: the fast path that ``pipe.optimize()`` applies.

Registers, through ``difflux_register_optimizations``: ``cpu_allocator`` (a check, CPU),
``channels_last``, ``fuse_qkv``,
``cpu_bf16_autocast`` (mode ``"max"``, CPU), ``regional_compile`` (group ``"compiler"``) and
``cuda_graphs`` (mode ``"max"``, CUDA). See ``docs/optimize.md``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
