"""Entry point of the wuerstchen plugin: registers its models and pipelines lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_wuerstchen"

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_wuerstchen:WuerstchenPriorPipeline",
    f"{_PKG}.pipeline_wuerstchen:WuerstchenDecoderPipeline",
    f"{_PKG}.pipeline_wuerstchen_combined:WuerstchenCombinedPipeline",
)

#: the models: the published checkpoints name them ["wuerstchen", "<Class>"] in model_index.json,
#: Diffusers 0.42.1 writes ["diffusers", "<Class>"]
MODELS: tuple[str, ...] = (
    f"{_PKG}.modeling:WuerstchenPrior",
    f"{_PKG}.modeling:WuerstchenDiffNeXt",
    f"{_PKG}.modeling:PaellaVQModel",
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    for ref in MODELS:
        register(ref, library="wuerstchen")
        register(ref, library="diffusers")
