"""Entry point of the sd-variants plugin: registers its pipelines and models lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_sd_variants"

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_lcm:LatentConsistencyModelPipeline",
    f"{_PKG}.pipeline_lcm:LatentConsistencyModelImg2ImgPipeline",
    f"{_PKG}.pipeline_instruct_pix2pix:StableDiffusionInstructPix2PixPipeline",
    f"{_PKG}.pipeline_instruct_pix2pix:StableDiffusionXLInstructPix2PixPipeline",
    f"{_PKG}.pipeline_panorama:StableDiffusionPanoramaPipeline",
    f"{_PKG}.pipeline_ldm3d:StableDiffusionLDM3DPipeline",
    f"{_PKG}.pipeline_paradigms:StableDiffusionParadigmsPipeline",
    f"{_PKG}.pipeline_semantic:SemanticStableDiffusionPipeline",
    f"{_PKG}.pipeline_cycle:CycleDiffusionPipeline",
    f"{_PKG}.pipeline_model_editing:StableDiffusionModelEditingPipeline",
    f"{_PKG}.pipeline_alt_diffusion:AltDiffusionPipeline",
    f"{_PKG}.pipeline_alt_diffusion:AltDiffusionImg2ImgPipeline",
    f"{_PKG}.pipeline_paint_by_example:PaintByExamplePipeline",
)

#: every model class the plugin provides, as a lazy reference
MODELS: tuple[str, ...] = ()


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    """Register the models under their Diffusers class names (library ``"diffusers"``)."""
    for ref in MODELS:
        register(ref)
    # Diffusers 0.42.1 writes ["diffusers", ...]; the published AltDiffusion folders name the pipeline folder
    roberta = f"{_PKG}.roberta_series:RobertaSeriesModelWithTransformation"
    register(roberta)
    register(roberta, library="alt_diffusion")
    exemplar = f"{_PKG}.paint_by_example_encoder:PaintByExampleImageEncoder"
    register(exemplar)
    register(exemplar, library="paint_by_example")
