"""Entry point of the stable-diffusion plugin: registers the pipelines and the safety checker lazily.

Importing this module imports neither torch nor transformers. The plugin also resolves the name
``"difflux:digits-text2img"`` to the embedded text-to-image model, so
``DiffusionPipeline.from_pretrained("difflux:digits-text2img")`` works offline.
"""

from __future__ import annotations

from pathlib import Path

from difflux import hookimpl
from difflux.options import LoadOptions
from difflux.registry import RegisterComponent, RegisterPipeline

#: The name of the embedded text-to-image model (``difflux generate --prompt ...`` without a model argument).
TEXT2IMG_MODEL = "difflux:digits-text2img"

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


@hookimpl(tryfirst=True)
def difflux_resolve_pretrained(name_or_path: str, options: LoadOptions) -> Path | None:
    """``"difflux:digits-text2img"`` is the embedded text-to-image pipeline; anything else is left to others."""
    if name_or_path != TEXT2IMG_MODEL:
        return None
    from .default_model import default_model_path

    return default_model_path()
