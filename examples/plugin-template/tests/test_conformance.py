"""The difflux conformance kits, one per thing the plugin registers."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import difflux_hello.plugin
import torch
from difflux.testing import (
    AttentionBackendConformance,
    ComponentConformance,
    PipelineConformance,
    SchedulerConformance,
)
from difflux_hello import ATTENTION_BACKEND
from difflux_hello.model import HelloDenoiser
from difflux_hello.pipeline import HelloPipeline
from difflux_hello.scheduler import HelloScheduler


class TestHelloDenoiser(ComponentConformance):
    component_class = HelloDenoiser

    def make_component(self) -> HelloDenoiser:
        torch.manual_seed(0)
        return HelloDenoiser()

    def make_inputs(self) -> dict[str, Any]:
        return {"sample": torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)), "timestep": 10}


class TestHelloScheduler(SchedulerConformance):
    scheduler_class = HelloScheduler
    configs = [{}, {"timestep_spacing": "trailing"}]


class TestHelloPipeline(PipelineConformance):
    pipeline_class = HelloPipeline

    def make_components(self) -> dict[str, Any]:
        torch.manual_seed(0)
        return {"denoiser": HelloDenoiser(), "scheduler": HelloScheduler()}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"generator": torch.Generator().manual_seed(seed), "num_inference_steps": 2, "output_type": "np"}


class TestHelloAttention(AttentionBackendConformance):
    backend_name = ATTENTION_BACKEND
    # registered for the test when not installed yet (the kit builds its own registry)
    plugin = (
        None
        if any(ep.value == "difflux_hello.plugin" for ep in entry_points(group="difflux"))
        else difflux_hello.plugin
    )
    head_dims = (8, 40, 64)
