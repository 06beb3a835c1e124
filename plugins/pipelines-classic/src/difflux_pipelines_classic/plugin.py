"""Entry point of the pipelines-classic plugin: registers its pipelines and models lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_pipelines_classic"

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_ldm:LDMTextToImagePipeline",
    f"{_PKG}.pipeline_ldm:LDMSuperResolutionPipeline",
    f"{_PKG}.vq_diffusion:VQDiffusionPipeline",
    f"{_PKG}.value_guided:ValueGuidedRLPipeline",
)

#: the models, under the library name Diffusers writes in ``model_index.json`` (its pipeline folder)
MODELS: tuple[tuple[str, str], ...] = (
    (f"{_PKG}.ldm_bert:LDMBertModel", "latent_diffusion"),
    (f"{_PKG}.vq_diffusion:LearnedClassifierFreeSamplingEmbeddings", "vq_diffusion"),
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    """Register the models under ``[library, ClassName]`` as published folders name them (folders are saved so),
    then under ``diffusers``, as Diffusers 0.42 writes its deprecated classes."""
    for ref, library in MODELS:
        register(ref, library=library)
    for ref, _ in MODELS:
        register(ref)
