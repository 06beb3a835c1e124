"""``difflux batch``: a jobs file -> one PNG per job plus ``manifest.jsonl``, on a Ray Data actor pool.

Layout of the output folder::

    DIR/images/000000.png ...   one image per job, named by its 0-based index in the jobs file
    DIR/manifest.jsonl          one JSON record per finished image, in the order they finished

Each image is written through a temporary file and renamed, and its record is appended (and
flushed to disk) only after that, so after a crash every record names a whole image. A second
run with the same jobs and output folder skips the recorded images and makes the rest: no job is
lost and none recorded twice (an image written but not yet recorded when the crash came is made
again, with the same seed, so the same pixels, and replaces the file). A torn last line of the
manifest is dropped. The folder remembers its jobs: resuming with different jobs or another model
is refused.

Engines: ``"ray"`` runs Ray Data ``map_batches`` over a pool of actors, each holding one pipeline
(one GPU per actor when the cluster has GPUs, else ``cpus_per_actor`` CPUs); a dying actor is
restarted by Ray and its unfinished job retried. ``"local"`` runs the same jobs in this process,
one after another (no Ray needed): the reference a Ray run is compared with.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflux.cli import UsageError

from .jobs import Job, default_model, read_jobs
from .runner import PipelineLoader, Runner, RunnerConfig, check_jobs_against, write_atomically

__all__ = ["MANIFEST", "BatchReport", "Manifest", "run_batch"]

MANIFEST = "manifest.jsonl"
ENGINES = ("ray", "local")


@dataclass(frozen=True)
class BatchReport:
    """What a :func:`run_batch` call did.

    :param total: jobs in the file.
    :param skipped: jobs already done by an earlier run (resumed).
    :param made: images made by this run.
    :param seconds: wall time of this run, from the first job sent to the last image recorded.
    :param actors: workers that ran (1 for the local engine).
    :param manifest: the manifest file.
    """

    total: int
    skipped: int
    made: int
    seconds: float
    actors: int
    manifest: Path

    @property
    def images_per_second(self) -> float:
        return self.made / self.seconds if self.seconds > 0 else 0.0


class Manifest:
    """``manifest.jsonl`` of an output folder: the finished jobs, each once.

    Opening it checks the records against ``jobs`` and ``model`` and rewrites it (atomically)
    without a torn last line or records whose image is gone.

    :raises difflux.cli.UsageError: the folder holds records of other jobs or another model, or a
        line other than the last is not JSON.
    """

    def __init__(self, output: Path, jobs: list[Job], model: str) -> None:
        self.path = output / MANIFEST
        self.model = model
        self.records: dict[int, dict[str, Any]] = {}
        if self.path.exists():
            self._load(output, jobs)
        write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in self.records.values()).encode())

    def _load(self, output: Path, jobs: list[Job]) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                index = int(record["index"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                if number == len(lines):  # the line a crash cut short
                    break
                raise UsageError(f"{self.path} line {number} is not a manifest record; remove the folder") from None
            other = index >= len(jobs) or record.get("key") != jobs[index].key or record.get("model") != self.model
            if other:
                raise UsageError(
                    f"--output {str(output)!r} holds a batch of other jobs or another model (manifest line "
                    f"{number}, job {index}); use another folder, or remove this one to start again"
                )
            if index not in self.records and (output / record["file"]).is_file():
                self.records[index] = record

    def add(self, record: dict[str, Any]) -> bool:
        """Append a record (flushed to disk); ``False`` when its job was already recorded (a retried job)."""
        index = int(record["index"])
        if index in self.records:
            return False
        record = {**record, "model": self.model}
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())
        self.records[index] = record
        return True


class _BatchActor:
    """A Ray Data ``map_batches`` callable class: one pipeline per actor, one record per job."""

    def __init__(self, config: RunnerConfig, loader: PipelineLoader | None = None) -> None:
        self.runner = Runner(config, loader)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        records = [json.dumps(self.runner.run(Job.from_json(str(text)))) for text in batch["job"]]
        return {"record": np.array(records, dtype=object)}


def _cluster_actors(cpus_per_actor: float, gpus_per_actor: float) -> int:
    import ray

    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // cpus_per_actor))


def _run_on_ray(
    pending: list[Job],
    config: RunnerConfig,
    loader: PipelineLoader | None,
    actors: int | None,
    cpus_per_actor: float,
    gpus_per_actor: float | None,
    batch_size: int,
    address: str | None,
) -> tuple[int, Iterator[dict[str, Any]]]:
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, configure_logging=False)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    count = actors or _cluster_actors(cpus_per_actor, gpus_per_actor)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    rows = [{"job": job.to_json()} for job in pending]
    # one block per batch of jobs: a job's record comes back as soon as its batch is done
    blocks = max(1, min(len(rows) // batch_size + (len(rows) % batch_size > 0), 10_000))
    ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        _BatchActor,
        fn_constructor_kwargs={"config": config, "loader": loader},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=count),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )
    return count, (json.loads(str(row["record"])) for row in ds.iter_rows())


def _run_locally(pending: list[Job], config: RunnerConfig, loader: PipelineLoader | None) -> Iterator[dict[str, Any]]:
    runner = Runner(config, loader)
    for job in pending:
        yield runner.run(job)


def _progress(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="difflux batch", disable=not enabled, file=sys.stderr)


def run_batch(
    jobs: str | Path | Iterable[Job],
    output: str | Path,
    *,
    model: str | None = None,
    engine: str = "ray",
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    batch_size: int = 1,
    base_seed: int = 0,
    scheduler: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    address: str | None = None,
    loader: PipelineLoader | None = None,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> BatchReport:
    """Generate one image per job into ``output`` (``images/`` and ``manifest.jsonl``), resuming a run.

    :param jobs: a JSON Lines / Parquet file (see :mod:`difflux_ray.jobs`) or :class:`Job` objects.
    :param output: the output folder (made when missing).
    :param model: folder, repo id or embedded name; default as ``difflux generate``: prompts ->
        ``difflux:digits-text2img``, else ``difflux:digits``.
    :param engine: ``"ray"`` (actor pool) or ``"local"`` (this process).
    :param actors: pool size; default one per GPU, else one per ``cpus_per_actor`` CPUs of the cluster.
    :param cpus_per_actor: CPUs reserved per actor (also its torch threads, rounded up to a whole number).
    :param gpus_per_actor: GPUs per actor; default 1 when the cluster has GPUs, else 0.
    :param batch_size: jobs per Ray task (1: each record returns as soon as its image is written).
    :param base_seed: the seed of a job without one is ``base_seed + index``.
    :param scheduler: scheduler class or sampler alias for every job (default: the model's own).
    :param device: ``cpu``, ``cuda`` ...; default CUDA when the worker has a GPU.
    :param dtype: ``float32`` / ``float16`` / ``bfloat16``; default as saved.
    :param address: the Ray cluster to join (default: the running one, else a new local one).
    :param loader: ``loader(RunnerConfig) -> pipeline``, run once per worker (default: load ``model``).
    :param progress: show a progress bar on standard error.
    :param on_record: called with each manifest record as it is written.
    :return: a :class:`BatchReport`.
    :raises difflux.cli.UsageError: bad jobs, engine, sizes, or an output folder of other jobs,
        before any model loads (a job the pipeline does not take: before any worker starts); after
        the run, jobs the pipeline's own checks refused (the others are recorded).
    """
    if engine not in ENGINES:
        raise UsageError(f"--engine {engine!r}: use one of {', '.join(ENGINES)}")
    if actors is not None and actors < 1:
        raise UsageError(f"--actors must be 1 or more, not {actors}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be 1 or more, not {batch_size}")
    if cpus_per_actor <= 0:
        raise UsageError(f"--cpus-per-actor must be above 0, not {cpus_per_actor}")
    job_list = read_jobs(jobs, base_seed) if isinstance(jobs, str | Path) else list(jobs)
    if [j.index for j in job_list] != list(range(len(job_list))):
        raise UsageError("jobs must be numbered 0, 1, 2 ... in order (as read_jobs numbers them)")
    model = model or default_model(job_list)
    out = Path(output).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output {str(out)!r} is a file; name a folder")
    if loader is None:
        check_jobs_against(_pipeline_class(model), job_list)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out, job_list, model)
    pending = [j for j in job_list if j.index not in manifest.records]
    skipped = len(job_list) - len(pending)
    threads = max(1, int(-(-cpus_per_actor // 1)))
    config = RunnerConfig(model=model, output=str(out), device=device, dtype=dtype, scheduler=scheduler,
                          threads=threads if engine == "ray" else None)  # fmt: skip
    made, count = 0, 1
    failed: dict[int, str] = {}
    start = time.perf_counter()
    if pending:
        if engine == "ray":
            count, records = _run_on_ray(
                pending, config, loader, actors, cpus_per_actor, gpus_per_actor, batch_size, address
            )
        else:
            records = _run_locally(pending, config, loader)
        with _progress(len(job_list), skipped, progress) as bar:
            for record in records:
                if "error" in record:
                    failed.setdefault(int(record["index"]), str(record["error"]))
                elif manifest.add(record):
                    made += 1
                    bar.update(1)
                    if on_record is not None:
                        on_record(record)
    seconds = time.perf_counter() - start
    if failed:
        first = min(failed)
        raise UsageError(
            f"{len(failed)} job(s) refused by the pipeline, first job {first}: {failed[first]}; the other "
            f"{len(manifest.records)} image(s) are recorded: fix those jobs and run again to make the rest"
        )
    missing = sorted(set(range(len(job_list))) - set(manifest.records))
    if missing:
        raise RuntimeError(f"the batch ended with {len(missing)} job(s) unrecorded (first: {missing[:5]}); run again")
    return BatchReport(len(job_list), skipped, made, seconds, count, manifest.path)


def _pipeline_class(model: str) -> type:
    """The pipeline class ``model`` loads as, from its ``model_index.json`` (no weights loaded)."""
    from difflux.options import LoadOptions
    from difflux.registry import get_registry

    registry = get_registry()
    folder = registry.resolve_pretrained(model, LoadOptions())
    index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    name = index.get("_class_name")
    if not isinstance(name, str):
        raise UsageError(f"--model {model!r}: model_index.json names no pipeline class; run difflux generate on it")
    cls: type = registry.pipeline_class(name, where=str(folder))
    return cls
