"""The embedded text-to-image model, loaded once; jobs files; a local Ray cluster for the Ray tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def text2img() -> Any:
    """The embedded text-to-image pipeline (16x16 images), progress bars off."""
    from difflux.cli import load_pipeline
    from difflux_ray.testing import MODEL

    pipe = load_pipeline(MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster with 2 CPUs for the whole session (started on first use)."""
    import logging

    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield ray
    finally:
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()
