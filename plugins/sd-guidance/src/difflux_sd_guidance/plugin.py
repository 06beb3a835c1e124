"""Entry point of the sd-guidance plugin: registers its pipelines lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterPipeline

_PKG = "difflux_sd_guidance"

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_sag:StableDiffusionSAGPipeline",
    f"{_PKG}.pipeline_attend_and_excite:StableDiffusionAttendAndExcitePipeline",
    f"{_PKG}.pipeline_gligen:StableDiffusionGLIGENPipeline",
    f"{_PKG}.pipeline_gligen:StableDiffusionGLIGENTextImagePipeline",
    f"{_PKG}.pipeline_diffedit:StableDiffusionDiffEditPipeline",
    f"{_PKG}.pipeline_pix2pix_zero:StableDiffusionPix2PixZeroPipeline",
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    """Register the pipelines under their Diffusers class names."""
    for ref in PIPELINES:
        register(ref)
