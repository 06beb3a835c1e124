"""Entry point of the unclip plugin: registers its pipelines lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_unclip"

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_unclip:UnCLIPPipeline",
    f"{_PKG}.pipeline_unclip:UnCLIPImageVariationPipeline",
    f"{_PKG}.pipeline_stable_unclip:StableUnCLIPPipeline",
    f"{_PKG}.pipeline_stable_unclip:StableUnCLIPImg2ImgPipeline",
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    # Diffusers writes the normaliser as ["stable_diffusion", "StableUnCLIPImageNormalizer"]
    register(f"{_PKG}.pipeline_stable_unclip:StableUnCLIPImageNormalizer", library="stable_diffusion")
