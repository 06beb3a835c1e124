"""Core's own plugin, registered through the same hooks as third-party ones."""

from __future__ import annotations

from pathlib import Path

from .hookspecs import hookimpl
from .options import LoadOptions
from .registry import RegisterAttentionBackend

REFERENCE_BACKEND = "reference"


@hookimpl
def difflux_register_attention_backends(register: RegisterAttentionBackend) -> None:
    # Plain torch maths: slow, exact, runs everywhere; the yardstick other backends are tested against.
    register(REFERENCE_BACKEND, "difflux.attention:reference_attention", priority=-100)


@hookimpl(trylast=True)
def difflux_resolve_pretrained(name_or_path: str, options: LoadOptions) -> Path | None:
    path = Path(name_or_path).expanduser()
    return path if path.is_dir() else None
