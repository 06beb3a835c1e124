"""Entry point of the unclip plugin: registers its pipelines lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterPipeline

_PKG = "difflux_unclip"

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_unclip:UnCLIPPipeline",
    f"{_PKG}.pipeline_unclip:UnCLIPImageVariationPipeline",
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)
