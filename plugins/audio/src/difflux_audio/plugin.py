"""Entry point of the audio plugin: registers its pipelines and models lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_audio"

#: every model / component class the plugin provides, as a lazy reference
MODELS: tuple[str, ...] = ()

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_audioldm:AudioLDMPipeline",
    f"{_PKG}.pipeline_audioldm:MusicLDMPipeline",
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    """Register the models under their Diffusers class names (library ``"diffusers"``)."""
    for ref in MODELS:
        register(ref)
