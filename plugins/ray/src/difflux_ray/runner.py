"""One pipeline making batch images: what each Ray actor holds, and what the local engine runs.

Each job runs alone (one ``__call__`` per image, with its own seeded CPU generator), so an image
is the same whichever worker made it and whatever ran before it on that worker.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difflux.cli import EMBEDDED_MODELS, UsageError

from .jobs import Job

__all__ = [
    "PipelineLoader",
    "Runner",
    "RunnerConfig",
    "call_parameters",
    "check_jobs_against",
    "default_loader",
    "write_atomically",
]

#: ``loader(config) -> pipeline``: how a worker gets its pipeline (default: ``difflux.cli.load_pipeline``).
PipelineLoader = Callable[["RunnerConfig"], Any]


@dataclass(frozen=True)
class RunnerConfig:
    """What every worker needs to build the same pipeline.

    :param model: a pipeline folder, repo id or embedded model name.
    :param output: the batch's output folder (images go to ``output/images``).
    :param device: ``"cpu"``, ``"cuda"`` ...; ``None``: CUDA when the worker sees a GPU, else CPU.
    :param dtype: ``"float16"`` ... or ``None`` (as saved).
    :param scheduler: a scheduler class name or sampler alias, or ``None`` (the model's own).
    :param threads: torch CPU threads per worker (``None``: leave torch's default).
    """

    model: str
    output: str
    device: str | None = None
    dtype: str | None = None
    scheduler: str | None = None
    threads: int | None = None


def call_parameters(cls: type) -> set[str]:
    """The keyword parameters of a pipeline class's ``__call__``."""
    return set(list(inspect.signature(inspect.unwrap(cls.__call__)).parameters)[1:])  # type: ignore[operator]


def check_jobs_against(cls: type, jobs: list[Job]) -> None:
    """Refuse jobs whose arguments the pipeline class does not take (before any worker starts).

    :raises difflux.cli.UsageError: naming the first such job, the argument, and what the class takes.
    """
    params = call_parameters(cls)
    for job in jobs:
        wanted = set(job.params) | {"generator"}
        missing = sorted(wanted - params)
        if missing:
            takes = ", ".join(sorted(p for p in params if p != "return_dict"))
            raise UsageError(f"job {job.index}: {cls.__name__} does not take {missing}; it takes: {takes}")


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``: never a half-written file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def default_loader(config: RunnerConfig) -> Any:
    """Load ``config.model`` as ``difflux generate`` does, on ``config.device`` (default: CUDA when there
    is a GPU, else CPU), with ``config.scheduler`` when given."""
    from difflux.cli import load_pipeline, scheduler_for

    device = config.device
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else None
    pipe = load_pipeline(config.model, config.dtype, device)
    if config.scheduler is not None:
        pipe.register_modules(scheduler=scheduler_for(pipe, config.scheduler))
    return pipe


class Runner:
    """Loads the pipeline once, then makes one image per job and writes it (PNG, atomically).

    :param config: the model and output folder.
    :param loader: ``loader(config) -> pipeline``; default: load ``config.model`` as ``difflux
        generate`` does, on ``config.device``, with ``config.scheduler``.
    """

    def __init__(self, config: RunnerConfig, loader: PipelineLoader | None = None) -> None:
        import torch

        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.config = config
        self.pipe = (loader or default_loader)(config)
        self.pipe.set_progress_bar_config(disable=True)
        self.params = call_parameters(type(self.pipe))
        self.default_steps = EMBEDDED_MODELS[config.model][1] if config.model in EMBEDDED_MODELS else None
        self.images = Path(config.output) / "images"
        self.images.mkdir(parents=True, exist_ok=True)

    def kwargs(self, job: Job) -> dict[str, Any]:
        """The ``__call__`` keyword arguments for ``job``: its parameters, its seeded generator, PIL output."""
        import torch

        kwargs = dict(job.params)
        if "class_labels" in kwargs:
            kwargs["class_labels"] = [kwargs["class_labels"]]
        if "num_inference_steps" not in kwargs and self.default_steps is not None:
            kwargs["num_inference_steps"] = self.default_steps
        kwargs["generator"] = torch.Generator().manual_seed(job.seed)
        if "output_type" in self.params:
            kwargs["output_type"] = "pil"
        return kwargs

    def run(self, job: Job) -> dict[str, Any]:
        """Make and write ``job``'s image; return its manifest record.

        :return: ``{"index", "file", "seed", "params", "key", "seconds", "worker"}`` (``file``
            relative to the output folder, ``seconds`` of generation and writing); when the
            pipeline's own input checks refuse the job (a ``ValueError`` / ``TypeError``, such as a
            height it cannot make), ``{"index", "error"}`` instead, and no file is written.
        """
        import io

        start = time.perf_counter()
        try:
            image = self.pipe(**self.kwargs(job)).images[0]
        except (ValueError, TypeError) as exc:
            return {"index": job.index, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        write_atomically(self.images / job.file, buffer.getvalue())
        return {
            "index": job.index,
            "file": f"images/{job.file}",
            "seed": job.seed,
            "params": job.params,
            "key": job.key,
            "seconds": round(time.perf_counter() - start, 4),
            "worker": os.getpid(),
        }
