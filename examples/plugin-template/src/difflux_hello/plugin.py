"""The entry point: difflux imports this module when it first builds its registry.

Keep it cheap: no torch, no model code. Register lazy ``"module:Class"`` references; difflux
imports a module only when a checkpoint (or a user) needs the class in it.
"""

from __future__ import annotations

import difflux
from difflux.registry import (
    RegisterAttentionBackend,
    RegisterComponent,
    RegisterPipeline,
    RegisterScheduler,
)

from . import ATTENTION_BACKEND


@difflux.hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    # The name is what model_index.json's "_class_name" says.
    register("difflux_hello.pipeline:HelloPipeline")


@difflux.hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    # Keyed as model_index.json names it: ["difflux_hello", "HelloDenoiser"].
    register("difflux_hello.model:HelloDenoiser", library="difflux_hello")


@difflux.hookimpl
def difflux_register_schedulers(register: RegisterScheduler) -> None:
    # Each alias maps to the config overrides it implies; the keys must be HelloScheduler's
    # config keys, and an alias must not equal another plugin's class or alias (case-insensitively).
    register(
        "difflux_hello.scheduler:HelloScheduler",
        aliases={"Hello": {}, "Hello Trailing": {"timestep_spacing": "trailing"}},
    )


@difflux.hookimpl
def difflux_register_attention_backends(register: RegisterAttentionBackend) -> None:
    # Below sdpa (100): chosen only when asked for by name, or when nothing better is installed.
    register(ATTENTION_BACKEND, "difflux_hello.attention:chunked_attention", priority=-10)
