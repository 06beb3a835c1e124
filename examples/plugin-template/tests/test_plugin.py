"""What the plugin registers, and that every lazy reference imports (``difflux plugins --check``)."""

from __future__ import annotations

from pathlib import Path

import torch
from difflux import DiffusionPipeline
from difflux.attention import attention, reference_attention
from difflux.registry import Registry
from difflux_hello import ATTENTION_BACKEND
from difflux_hello.model import HelloDenoiser
from difflux_hello.pipeline import HelloPipeline
from difflux_hello.scheduler import HelloScheduler


def test_every_reference_imports_and_every_alias_is_valid(hello_registry: Registry) -> None:
    report = hello_registry.check()
    assert report.problems == []
    assert hello_registry.plugins["hello"].registered  # registered something


def test_names_resolve_to_the_classes(hello_registry: Registry) -> None:
    assert hello_registry.pipeline_class("HelloPipeline") is HelloPipeline
    assert hello_registry.component_class("difflux_hello", "HelloDenoiser") is HelloDenoiser
    assert hello_registry.resolve_scheduler("hello trailing") == (HelloScheduler, {"timestep_spacing": "trailing"})


def test_a_saved_pipeline_loads_by_its_class_name(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pipe = HelloPipeline(denoiser=HelloDenoiser(), scheduler=HelloScheduler())
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is HelloPipeline and type(loaded.scheduler) is HelloScheduler
    images = loaded(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.images.shape == (2, 8, 8, 3)


def test_the_attention_backend_is_chosen_by_name_and_splits_long_queries() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 150, 16, generator=g) for _ in range(3))  # 150 queries: three chunks
    torch.testing.assert_close(
        attention(q, k, v, backend=ATTENTION_BACKEND, is_causal=True), reference_attention(q, k, v, is_causal=True)
    )
