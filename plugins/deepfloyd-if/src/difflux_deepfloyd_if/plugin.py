"""Entry point of the deepfloyd-if plugin: registers its pipelines and components lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_deepfloyd_if"

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_if:IFPipeline",
    f"{_PKG}.pipeline_if:IFSuperResolutionPipeline",
    f"{_PKG}.pipeline_if_img2img:IFImg2ImgPipeline",
    f"{_PKG}.pipeline_if_img2img:IFImg2ImgSuperResolutionPipeline",
    f"{_PKG}.pipeline_if_inpainting:IFInpaintingPipeline",
    f"{_PKG}.pipeline_if_inpainting:IFInpaintingSuperResolutionPipeline",
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    # Diffusers writes them as ["deepfloyd_if", "IFSafetyChecker"] / ["deepfloyd_if", "IFWatermarker"]
    register(f"{_PKG}.safety_checker:IFSafetyChecker", library="deepfloyd_if")
    register(f"{_PKG}.watermark:IFWatermarker", library="deepfloyd_if")
