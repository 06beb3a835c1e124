"""``difflux batch`` throughput over 1 and 2 Ray actors, and ``difflux serve`` latency, on the embedded model.

Batch: ``--jobs`` prompt jobs on ``difflux:digits-text2img`` (16x16, ``--steps`` steps) through
:func:`difflux_ray.batch.run_batch` on a local Ray cluster of 2 CPUs, with 1 actor and with 2
actors (one torch thread each); the same jobs in one process with the local engine; and, as the
outside reference, Diffusers' ``StableDiffusionPipeline`` on the same folder, seeds and prompts, in
one process. Two figures per run: images/s over the whole run (actor start-up and model loading
included) and steady images/s (between the first and the last image recorded). Every run uses one
torch thread per worker.

Server: 20 sequential and 20 concurrent requests (one image, ``--steps`` steps) against Ray Serve
with 1 replica (request batching up to 8), and against the one-process FastAPI/uvicorn server;
latency p50/p95 in milliseconds.

Run: ``python bench/bench_ray.py`` (about 2-3 minutes on a quiet 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MODEL = "difflux:digits-text2img"


def write_jobs(path: Path, count: int, steps: int) -> Path:
    with path.open("w") as out:
        for i in range(count):
            out.write(json.dumps({"prompt": f"a handwritten {i % 10}", "steps": steps}) + "\n")
    return path


def batch_run(jobs: Path, out: Path, **options: Any) -> dict[str, float]:
    from difflux_ray.batch import run_batch

    stamps: list[float] = []
    start = time.perf_counter()
    report = run_batch(jobs, out, progress=False, on_record=lambda r: stamps.append(time.perf_counter()), **options)
    total = time.perf_counter() - start
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 0.0
    return {"images": report.made, "seconds": total, "overall": report.made / total, "steady": steady}


def diffusers_run(count: int, steps: int) -> dict[str, float]:
    """Diffusers on the same folder, prompts and seeds (base seed 0 + index), one process."""
    import diffusers
    import torch
    from difflux.options import LoadOptions
    from difflux.registry import get_registry

    folder = get_registry().resolve_pretrained(MODEL, LoadOptions())
    start = time.perf_counter()
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    first = time.perf_counter()
    for i in range(count):
        pipe(f"a handwritten {i % 10}", num_inference_steps=steps, generator=torch.Generator().manual_seed(i))
    end = time.perf_counter()
    return {"images": count, "seconds": end - start, "overall": count / (end - start), "steady": count / (end - first)}


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1000, p95 * 1000


def latency(url: str, steps: int, count: int = 20) -> dict[str, tuple[float, float]]:
    import requests

    def one(i: int) -> float:
        start = time.perf_counter()
        answer = requests.post(
            f"{url}/v1/images/generations", json={"prompt": f"a handwritten {i % 10}", "steps": steps, "seed": i}
        )
        answer.raise_for_status()
        return time.perf_counter() - start

    one(0)  # warm-up
    sequential = [one(i) for i in range(count)]
    with ThreadPoolExecutor(count) as pool:
        concurrent = list(pool.map(one, range(count)))
    return {"sequential": percentiles(sequential), "concurrent": percentiles(concurrent)}


def local_server(steps: int) -> dict[str, tuple[float, float]]:
    import uvicorn
    from difflux_ray.server import ImageService, LocalBackend, create_app

    app = create_app(LocalBackend(ImageService(MODEL)), MODEL)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        return latency(f"http://127.0.0.1:{port}", steps)
    finally:
        server.should_exit = True
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    import ray
    import torch

    torch.set_num_threads(1)  # the in-process runs get one thread, as each actor does
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        jobs = write_jobs(Path(tmp) / "jobs.jsonl", args.jobs, args.steps)
        results = {"diffusers, 1 process": diffusers_run(args.jobs, args.steps)}
        results["difflux local engine, 1 process"] = batch_run(jobs, Path(tmp) / "local", engine="local")
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        for actors in (1, 2):
            results[f"difflux batch, Ray, {actors} actor(s)"] = batch_run(
                jobs, Path(tmp) / f"ray{actors}", engine="ray", actors=actors
            )
        print(f"\nbatch of {args.jobs} jobs, {args.steps} steps, 16x16 ({MODEL}):")
        for name, r in results.items():
            print(f"  {name:36s} {r['seconds']:6.1f} s   {r['overall']:6.2f} img/s overall   {r['steady']:6.2f} steady")
        one, two = results["difflux batch, Ray, 1 actor(s)"], results["difflux batch, Ray, 2 actor(s)"]
        local, ref = results["difflux local engine, 1 process"], results["diffusers, 1 process"]
        print(f"  ratio 2 actors / 1 actor: {two['overall'] / one['overall']:.2f} overall, "
              f"{two['steady'] / one['steady']:.2f} steady")  # fmt: skip
        print(f"  ratio difflux local / diffusers (time per image, steady): {ref['steady'] / local['steady']:.2f}")

        from difflux_ray.serving import RayServeConfig, serve_ray
        from ray import serve

        serve_ray(MODEL, port=8931, config=RayServeConfig(replicas=1, max_batch_size=8), blocking=False)
        served = {"Ray Serve, 1 replica": latency("http://127.0.0.1:8931", args.steps)}
        serve.shutdown()
        ray.shutdown()
        served["one process (FastAPI/uvicorn)"] = local_server(args.steps)
        print(f"\nserver latency, 20 requests of one image, {args.steps} steps (ms, p50 / p95):")
        for name, r in served.items():
            (s50, s95), (c50, c95) = r["sequential"], r["concurrent"]
            print(f"  {name:32s} sequential {s50:7.1f} / {s95:7.1f}   concurrent {c50:7.1f} / {c95:7.1f}")


if __name__ == "__main__":
    main()
