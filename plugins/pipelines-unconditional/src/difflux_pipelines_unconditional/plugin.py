"""Entry point of the pipelines-unconditional plugin: registers its pipelines and the RePaint scheduler.

Everything is registered as a lazy ``"module:Class"`` reference, so loading the plugin imports
neither torch nor the pipeline modules. The plugin also resolves the name ``"difflux:digits"`` to
the embedded default model, so ``DiffusionPipeline.from_pretrained("difflux:digits")`` works offline.
"""

from __future__ import annotations

from pathlib import Path

from difflux import hookimpl
from difflux.options import LoadOptions
from difflux.registry import RegisterPipeline, RegisterScheduler

__all__ = [
    "DEFAULT_MODEL",
    "PIPELINES",
    "SCHEDULERS",
    "difflux_register_pipelines",
    "difflux_register_schedulers",
    "difflux_resolve_pretrained",
]

#: The name of the embedded default model (``difflux generate`` without a model argument).
DEFAULT_MODEL = "difflux:digits"

_PKG = "difflux_pipelines_unconditional"

#: Every pipeline this plugin provides, under its Diffusers class name.
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.ddpm:DDPMPipeline",
    f"{_PKG}.ddim:DDIMPipeline",
    f"{_PKG}.pndm:PNDMPipeline",
    f"{_PKG}.ldm:LDMPipeline",
    f"{_PKG}.dit:DiTPipeline",
    f"{_PKG}.consistency:ConsistencyModelPipeline",
    f"{_PKG}.score_sde_ve:ScoreSdeVePipeline",
    f"{_PKG}.karras_ve:KarrasVePipeline",
    f"{_PKG}.dance_diffusion:DanceDiffusionPipeline",
    f"{_PKG}.repaint:RePaintPipeline",
)

#: The scheduler only RePaint uses, which ships with its pipeline.
SCHEDULERS: tuple[str, ...] = (f"{_PKG}.repaint_scheduler:RePaintScheduler",)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    """Register the pipelines under their Diffusers class names."""
    for ref in PIPELINES:
        register(ref)


@hookimpl
def difflux_register_schedulers(register: RegisterScheduler) -> None:
    """Register ``RePaintScheduler``."""
    for ref in SCHEDULERS:
        register(ref)


@hookimpl(tryfirst=True)
def difflux_resolve_pretrained(name_or_path: str, options: LoadOptions) -> Path | None:
    """``"difflux:digits"`` is the embedded digits pipeline; anything else is left to other resolvers."""
    if name_or_path != DEFAULT_MODEL:
        return None
    from .default_model import default_model_path

    return default_model_path()
