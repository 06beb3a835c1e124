"""difflux beyond one process: ``difflux batch`` on Ray Data, ``difflux serve`` (OpenAI images API).

Importing this package imports neither torch nor Ray; each name loads its module on first use.

- :func:`run_batch` / :class:`BatchReport` (``difflux_ray.batch``): a jobs file -> images and a manifest.
- :func:`read_jobs` / :class:`Job` (``difflux_ray.jobs``): jobs files, checked.
- :class:`ImageService`, :func:`create_app`, :func:`serve_local`, :class:`Limits` (``difflux_ray.server``):
  the images API in one process.
- :func:`serve_ray`, :func:`build_app`, :class:`RayServeConfig` (``difflux_ray.serving``): on Ray Serve.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .batch import BatchReport, run_batch
    from .jobs import Job, read_jobs
    from .server import ImageService, Limits, create_app, serve_local
    from .serving import RayServeConfig, build_app, serve_ray

__all__ = [
    "BatchReport",
    "ImageService",
    "Job",
    "Limits",
    "RayServeConfig",
    "build_app",
    "create_app",
    "read_jobs",
    "run_batch",
    "serve_local",
    "serve_ray",
]

_WHERE = {
    "BatchReport": "batch",
    "run_batch": "batch",
    "Job": "jobs",
    "read_jobs": "jobs",
    "ImageService": "server",
    "Limits": "server",
    "create_app": "server",
    "serve_local": "server",
    "RayServeConfig": "serving",
    "build_app": "serving",
    "serve_ray": "serving",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_ray' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
