"""The images API on Ray Serve: an HTTP ingress deployment and a model deployment with request batching.

The ingress (one replica by default) runs the same FastAPI app as the one-process server
(:func:`difflux_ray.server.create_app`) and forwards each request to the model deployment
(``replicas`` replicas, each one pipeline, on one GPU when the cluster has GPUs). Each replica
gathers up to ``max_batch_size`` requests arriving within ``batch_wait_s`` into one call of
:meth:`difflux_ray.server.ImageService.generate` (Ray Serve's ``@serve.batch``); requests that
agree on size, steps, guidance, scheduler and negative prompt run as one pipeline call.
"""

from __future__ import annotations

import asyncio
import typing
from dataclasses import dataclass
from typing import Any

from ray import serve

from .server import Failure, Generated, ImageRequest, ImageService, ImageStore, Limits, create_app

__all__ = ["RayServeConfig", "build_app", "serve_ray"]

# Ray's class decorators, typed loosely: what they return has ``options``, which Ray's annotations lack.
_deployment: Any = serve.deployment
_ingress: Any = serve.ingress


@dataclass(frozen=True)
class RayServeConfig:
    """How the images API runs on Ray Serve.

    :param replicas: model replicas (each holds one pipeline).
    :param max_batch_size: requests gathered into one ``generate`` call per replica.
    :param batch_wait_s: how long a replica waits for a batch to fill (seconds).
    :param cpus_per_replica: CPUs reserved per model replica.
    :param gpus_per_replica: GPUs per model replica (``None``: 1 when the cluster has GPUs, else 0).
    :param device: ``cpu``, ``cuda`` ...; default CUDA when the replica sees a GPU.
    :param dtype: weights dtype (default as saved).
    """

    replicas: int = 1
    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    cpus_per_replica: float = 1.0
    gpus_per_replica: float | None = None
    device: str | None = None
    dtype: str | None = None


@_deployment
class ImageModel:
    """A model replica: one :class:`ImageService`, fed in batches."""

    def __init__(self, model: str, limits: Limits, config: RayServeConfig) -> None:
        self.service = ImageService(model, limits, device=config.device, dtype=config.dtype)
        batched = typing.cast(Any, self.generate)
        batched.set_max_batch_size(config.max_batch_size)
        batched.set_batch_wait_timeout_s(config.batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate(self, requests: list[ImageRequest]) -> list[Generated | Failure]:
        return await asyncio.to_thread(self.service.generate, requests)


class _HandleBackend:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def generate(self, request: ImageRequest) -> Generated | Failure:
        result: Generated | Failure = await self.handle.generate.remote(request)
        return result


@_deployment
@_ingress()
class Ingress:
    """The HTTP side: the FastAPI app of :func:`difflux_ray.server.create_app` over the model deployment."""

    def __init__(self, model_handle: Any, model: str, store_folder: str | None = None) -> None:
        self.backend = _HandleBackend(model_handle)
        self.model = model
        self.store = ImageStore(store_folder)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.backend, self.model, self.store)


def build_app(model: str, limits: Limits | None = None, config: RayServeConfig | None = None) -> Any:
    """The Ray Serve application (``serve.run(build_app(...))``) of the images API over ``model``."""
    import ray

    config = config or RayServeConfig()
    gpus = config.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    options: dict[str, Any] = {"num_cpus": config.cpus_per_replica}
    if gpus:
        options["num_gpus"] = gpus
    model_app = (
        typing.cast(Any, ImageModel)
        .options(num_replicas=config.replicas, ray_actor_options=options)
        .bind(model, limits or Limits(), config)
    )
    return typing.cast(Any, Ingress).options(ray_actor_options={"num_cpus": 0}).bind(model_app, model)


def serve_ray(
    model: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    config: RayServeConfig | None = None,
    address: str | None = None,
    blocking: bool = True,
) -> None:
    """Start Ray (or join ``address``), deploy the images API at ``http://host:port/``, and (``blocking``) wait.

    With ``blocking=False`` it returns once the application is running (``serve.shutdown()`` stops it).
    """
    import logging
    import time

    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(model, limits, config), name="difflux", route_prefix="/")
    while blocking:
        time.sleep(3600)
