"""Core's own plugin, registered through the same hooks as third-party ones."""

from __future__ import annotations

from pathlib import Path

from .hookspecs import hookimpl
from .options import LoadOptions
from .registry import RegisterAttentionBackend, RegisterOffloadStrategy

REFERENCE_BACKEND = "reference"
SLICED_BACKEND = "sliced"  # difflux.sliced_attention.SLICED_BACKEND (not imported here: it needs torch)


@hookimpl
def difflux_register_attention_backends(register: RegisterAttentionBackend) -> None:
    # Plain torch maths: slow, exact, runs everywhere; the yardstick other backends are tested against.
    register(REFERENCE_BACKEND, "difflux.attention:reference_attention", priority=-100)
    # Slicing runs another backend slice by slice (enable_attention_slicing); lowest priority, so
    # it is never chosen automatically, only by name (its inner backend checks the inputs).
    register(SLICED_BACKEND, "difflux.sliced_attention:sliced_attention", priority=-1000)


@hookimpl(trylast=True)
def difflux_resolve_pretrained(name_or_path: str, options: LoadOptions) -> Path | None:
    path = Path(name_or_path).expanduser()
    return path if path.is_dir() else None


@hookimpl
def difflux_register_offload_strategies(register: RegisterOffloadStrategy) -> None:
    # Model, sequential and group offload, on accelerate's hooks (lazy: importing torch waits for use).
    for name in ("model", "sequential", "group"):
        register(name, f"difflux.offload:{name}_offload")
