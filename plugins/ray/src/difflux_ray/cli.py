"""``difflux batch`` and ``difflux serve``: their parsers (imported whenever ``difflux`` runs, so light)
and handlers (which import torch, ray, uvicorn when they run)."""

from __future__ import annotations

import argparse
from typing import TextIO

from difflux.cli import TEXT2IMG_MODEL, UsageError

__all__ = ["add_batch", "add_serve"]


def _positive(kind: type[int] | type[float], low: float = 0, strict: bool = False) -> argparse._ActionType:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'above' if strict else 'at least'} {low}, not {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


# -- difflux batch -----------------------------------------------------------------------------


def _run_batch(args: argparse.Namespace, out: TextIO) -> int:
    from .batch import run_batch

    report = run_batch(
        args.jobs,
        args.output,
        model=args.model,
        engine=args.engine,
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        batch_size=args.batch_size,
        base_seed=args.seed,
        scheduler=args.scheduler,
        device=args.device,
        dtype=args.dtype,
        address=args.address,
        progress=not args.no_progress,
    )
    resumed = f", {report.skipped} already done" if report.skipped else ""
    out.write(
        f"wrote {report.made} image(s) to {args.output}{resumed} ({report.actors} worker(s), "
        f"{report.seconds:.1f} s, {report.images_per_second:.2f} images/s); manifest {report.manifest}\n"
    )
    return 0


def add_batch(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``difflux batch``."""
    parser.description = (
        "Make one image per job of JOBS (JSON Lines: one object per line; or Parquet: one row per job) "
        "with keys prompt, negative_prompt, class_label, seed, steps, guidance_scale, height, width, eta. "
        "Images go to OUTPUT/images/, one record per image to OUTPUT/manifest.jsonl as they finish; "
        "running again resumes. Without --model: the embedded text-to-image model when the jobs have "
        "prompts, else the digits model."
    )
    parser.add_argument("jobs", metavar="JOBS", help="a .jsonl or .parquet file of jobs")
    parser.add_argument("--output", required=True, help="output folder (made when missing; resumed when it exists)")
    parser.add_argument("--model", help="pipeline folder, repo id or embedded name (default: as difflux generate)")
    parser.add_argument("--engine", choices=("ray", "local"), default="ray", help="ray (default) or local")
    parser.add_argument(
        "--actors", type=_positive(int, 1), help="workers (default: one per GPU, else one per --cpus-per-actor CPUs)"
    )
    parser.add_argument(
        "--cpus-per-actor", type=_positive(float, 0, strict=True), default=1.0, help="CPUs per worker (default 1)"
    )
    parser.add_argument("--gpus-per-actor", type=_positive(float), help="GPUs per worker (default 1 when any)")
    parser.add_argument("--batch-size", type=_positive(int, 1), default=1, help="jobs per Ray task (default 1)")
    parser.add_argument(
        "--seed", type=_positive(int), default=0, help="a job without a seed gets SEED + its index (default 0)"
    )
    parser.add_argument("--scheduler", help="scheduler class name or sampler alias for every job")
    parser.add_argument("--device", help="cpu, cuda ... (default: CUDA when the worker has a GPU)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="weights dtype")
    parser.add_argument("--address", help="Ray cluster address (default: start a local one)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run_batch)


# -- difflux serve -----------------------------------------------------------------------------


def _run_serve(args: argparse.Namespace, out: TextIO) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be from 0 to 65535, not {args.port}")
    from .server import Limits, serve_local

    limits = Limits(max_n=args.max_n, max_size=args.max_size, max_steps=args.max_steps)
    model = args.model or TEXT2IMG_MODEL
    url = f"http://{args.host}:{args.port}/v1"
    out.write(f"difflux serve: {model} at {url} (engine {args.engine}); Ctrl+C stops it\n")
    out.flush()
    if args.engine == "local":
        serve_local(model, args.host, args.port, limits, device=args.device, dtype=args.dtype)
        return 0
    from .serving import RayServeConfig, serve_ray

    config = RayServeConfig(
        replicas=args.replicas,
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1000,
        cpus_per_replica=args.cpus_per_replica,
        gpus_per_replica=args.gpus_per_replica,
        device=args.device,
        dtype=args.dtype,
    )
    serve_ray(model, args.host, args.port, limits, config, address=args.address)
    return 0


def add_serve(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``difflux serve``."""
    parser.description = (
        "Serve MODEL (default: the embedded text-to-image model) with the OpenAI images API: "
        "POST /v1/images/generations (prompt, n, size, response_format b64_json or url, and difflux's "
        "steps, guidance_scale, seed, scheduler, negative_prompt). On Ray Serve (replicas, request "
        "batching), or in this one process with --engine local."
    )
    parser.add_argument(
        "model", nargs="?", metavar="MODEL", help=f"pipeline folder or repo id (default {TEXT2IMG_MODEL})"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--engine", choices=("ray", "local"), default="ray", help="ray (default) or local")
    parser.add_argument("--replicas", type=_positive(int, 1), default=1, help="model replicas on Ray (default 1)")
    parser.add_argument("--max-batch-size", type=_positive(int, 1), default=8, help="requests per batch (default 8)")
    parser.add_argument(
        "--batch-wait-ms", type=_positive(float), default=10.0, help="wait for a batch to fill, ms (default 10)"
    )
    parser.add_argument("--cpus-per-replica", type=_positive(float, 0, strict=True), default=1.0, help="default 1")
    parser.add_argument("--gpus-per-replica", type=_positive(float), help="GPUs per replica (default 1 when any)")
    parser.add_argument("--max-n", type=_positive(int, 1), default=4, help="most images per request (default 4)")
    parser.add_argument("--max-size", type=_positive(int, 8), default=1024, help="most pixels per side (default 1024)")
    parser.add_argument("--max-steps", type=_positive(int, 1), default=100, help="most steps per request (default 100)")
    parser.add_argument("--device", help="cpu, cuda ... (default: CUDA when there is a GPU)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="weights dtype")
    parser.add_argument("--address", help="Ray cluster address (default: start a local one)")
    parser.set_defaults(handler=_run_serve)
