"""Entry point of the pixart plugin: registers its pipelines lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterPipeline

_PKG = "difflux_pixart"

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_pixart:PixArtAlphaPipeline",
    f"{_PKG}.pipeline_pixart:PixArtSigmaPipeline",
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)
