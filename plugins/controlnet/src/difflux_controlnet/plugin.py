"""Entry point of the controlnet plugin: registers its models and pipelines lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_controlnet"

#: every model class the plugin provides, as a lazy reference
MODELS: tuple[str, ...] = (
    f"{_PKG}.controlnet:ControlNetModel",
    f"{_PKG}.multicontrolnet:MultiControlNetModel",
)

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_controlnet:StableDiffusionControlNetPipeline",
    f"{_PKG}.pipeline_controlnet:StableDiffusionControlNetImg2ImgPipeline",
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
