"""Entry point of the wuerstchen plugin: registers its models and pipelines lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_wuerstchen"

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = ()

#: the models, which Diffusers writes into model_index.json as ["wuerstchen", "<Class>"]
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
