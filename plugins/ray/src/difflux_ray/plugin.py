"""Entry point of the ray plugin: registers ``difflux batch`` and ``difflux serve`` (imports neither torch nor ray)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from difflux import hookimpl

if TYPE_CHECKING:
    from difflux.cli import RegisterCommand


@hookimpl
def difflux_register_commands(register: RegisterCommand) -> None:
    """``difflux batch`` (jobs file -> images + manifest, on Ray Data) and ``difflux serve`` (OpenAI images API)."""
    register(
        "batch",
        "difflux_ray.cli:add_batch",
        help="generate one image per line of a JSON Lines or Parquet jobs file, on a Ray actor pool",
    )
    register(
        "serve",
        "difflux_ray.cli:add_serve",
        help="serve a pipeline over HTTP with the OpenAI images API (POST /v1/images/generations)",
    )
