"""Entry point of the Flax plugin: registers its classes as lazy references (imports neither JAX nor torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline, RegisterScheduler

_PKG = "difflux_flax"

#: every Flax scheduler class, as a lazy reference
SCHEDULERS: tuple[str, ...] = tuple(
    f"{_PKG}.schedulers:{name}"
    for name in (
        "FlaxDDIMScheduler",
        "FlaxDDPMScheduler",
        "FlaxPNDMScheduler",
        "FlaxLMSDiscreteScheduler",
        "FlaxEulerDiscreteScheduler",
        "FlaxDPMSolverMultistepScheduler",
    )
)


@hookimpl
def difflux_register_schedulers(register: RegisterScheduler) -> None:
    for ref in SCHEDULERS:
        register(ref)


#: every Flax model class: (library in model_index.json, lazy reference)
MODELS: tuple[tuple[str, str], ...] = (
    ("diffusers", f"{_PKG}.unet:FlaxUNet2DConditionModel"),
    ("diffusers", f"{_PKG}.vae:FlaxAutoencoderKL"),
    ("transformers", f"{_PKG}.clip:FlaxCLIPTextModel"),
)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    for library, ref in MODELS:
        register(ref, library=library)


#: every Flax pipeline class, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline:FlaxDiffusionPipeline",
    f"{_PKG}.pipeline_stable_diffusion:FlaxStableDiffusionPipeline",
    f"{_PKG}.pipeline_stable_diffusion:FlaxStableDiffusionImg2ImgPipeline",
    f"{_PKG}.pipeline_stable_diffusion:FlaxStableDiffusionInpaintPipeline",
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)
