"""Entry point of the stable-diffusion plugin: registers the pipelines and the safety checker lazily.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_stable_diffusion"

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_stable_diffusion:StableDiffusionPipeline",
    f"{_PKG}.pipeline_stable_diffusion:StableDiffusionImg2ImgPipeline",
    f"{_PKG}.pipeline_stable_diffusion:StableDiffusionInpaintPipeline",
    f"{_PKG}.pipeline_depth2img:StableDiffusionDepth2ImgPipeline",
    f"{_PKG}.pipeline_image_variation:StableDiffusionImageVariationPipeline",
    f"{_PKG}.pipeline_upscale:StableDiffusionLatentUpscalePipeline",
    f"{_PKG}.pipeline_upscale:StableDiffusionUpscalePipeline",
    f"{_PKG}.pipeline_stable_diffusion_xl:StableDiffusionXLPipeline",
    f"{_PKG}.pipeline_stable_diffusion_xl:StableDiffusionXLImg2ImgPipeline",
    f"{_PKG}.pipeline_stable_diffusion_xl:StableDiffusionXLInpaintPipeline",
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    # Diffusers writes the checker as ["stable_diffusion", "StableDiffusionSafetyChecker"]
    register(f"{_PKG}.safety_checker:StableDiffusionSafetyChecker", library="stable_diffusion")
