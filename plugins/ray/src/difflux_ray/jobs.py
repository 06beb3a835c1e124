"""Batch jobs: one image per line of a JSON Lines or Parquet file, checked before any model loads.

A job is a JSON object (a Parquet row) of ``__call__`` arguments:

==================  ======================================  =========================================
key                 type                                    passed as
==================  ======================================  =========================================
``prompt``          string                                  ``prompt`` (text-to-image pipelines)
``negative_prompt`` string                                  ``negative_prompt``
``class_label(s)``  whole number >= 0 (or a one-item list)  ``class_labels=[n]`` (class-conditional)
``seed``            whole number >= 0                       ``generator=torch.Generator().manual_seed``
``steps``           whole number >= 1                       ``num_inference_steps``
``guidance_scale``  finite number                           ``guidance_scale``
``height/width``    whole number >= 8                       ``height`` / ``width`` (pixels)
``eta``             finite number >= 0                      ``eta`` (DDIM)
==================  ======================================  =========================================

(``num_inference_steps`` is accepted as a synonym of ``steps``.) A job without ``seed`` gets
``base_seed + index`` (``index``: its 0-based position in the file), so every image depends on
its job only, never on how many workers ran or in which order.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from difflux.cli import DEFAULT_MODEL, TEXT2IMG_MODEL, UsageError

__all__ = ["JOB_KEYS", "Job", "default_model", "parse_job", "read_jobs"]

#: job key -> the ``__call__`` parameter it becomes
JOB_KEYS: dict[str, str] = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "class_label": "class_labels",
    "class_labels": "class_labels",
    "seed": "generator",
    "steps": "num_inference_steps",
    "num_inference_steps": "num_inference_steps",
    "guidance_scale": "guidance_scale",
    "height": "height",
    "width": "width",
    "eta": "eta",
}


@dataclass(frozen=True)
class Job:
    """One line of a jobs file: its 0-based ``index``, its ``seed`` and the pipeline arguments ``params``.

    ``params`` holds JSON values keyed by ``__call__`` parameter (``class_labels`` as one whole
    number, ``generator`` left out: the seed stands for it).
    """

    index: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A digest of the seed and parameters: a resumed batch refuses a folder made from other jobs."""
        text = json.dumps({"seed": self.seed, **self.params}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def file(self) -> str:
        """The image's file name in the output folder's ``images/``."""
        return f"{self.index:06d}.png"

    def to_json(self) -> str:
        return json.dumps({"index": self.index, "seed": self.seed, "params": self.params})

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        return cls(index=int(data["index"]), seed=int(data["seed"]), params=dict(data["params"]))


def _whole(where: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UsageError(f"{where}: {key!r} must be a whole number >= {low}, not {value!r}")
    return value


def _number(where: str, key: str, value: Any, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{where}: {key!r} must be a finite number, not {value!r}")
    if low is not None and value < low:
        raise UsageError(f"{where}: {key!r} must be {low} or more, not {value!r}")
    return float(value)


def parse_job(data: Any, index: int, base_seed: int = 0, where: str = "") -> Job:
    """Check one job (a mapping of the keys in :data:`JOB_KEYS`) and return it as a :class:`Job`.

    :param data: the parsed line or row; ``None`` values count as absent (Parquet fills missing columns).
    :param index: the job's 0-based position in its file.
    :param base_seed: the seed of a job without ``seed`` is ``base_seed + index``.
    :param where: ``"FILE line N"``, for error messages.
    :raises difflux.cli.UsageError: not an object, an unknown key, or a value of the wrong type or range.
    """
    where = where or f"job {index}"
    if not isinstance(data, Mapping):
        raise UsageError(f'{where}: a job is a JSON object such as {{"prompt": "a seven"}}, not {data!r}')
    given = {k: v for k, v in data.items() if v is not None}
    unknown = sorted(set(given) - set(JOB_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {unknown}; a job takes {', '.join(JOB_KEYS)}")
    for a, b in (("class_label", "class_labels"), ("steps", "num_inference_steps")):
        if a in given and b in given:
            raise UsageError(f"{where}: give {a!r} or {b!r}, not both")
    params: dict[str, Any] = {}
    seed = base_seed + index
    for key, value in given.items():
        target = JOB_KEYS[key]
        if key in ("prompt", "negative_prompt"):
            if not isinstance(value, str):
                raise UsageError(f"{where}: {key!r} must be a string, not {value!r}")
            params[target] = value
        elif target == "class_labels":
            if isinstance(value, list | tuple) and len(value) == 1:
                value = value[0]
            if isinstance(value, list | tuple):
                raise UsageError(f"{where}: one job makes one image, so {key!r} is one label, not {value!r}")
            params[target] = _whole(where, key, value, 0)
        elif key == "seed":
            seed = _whole(where, key, value, 0)
        elif target == "num_inference_steps":
            params[target] = _whole(where, key, value, 1)
        elif key in ("height", "width"):
            params[target] = _whole(where, key, value, 8)
        else:
            params[target] = _number(where, key, value, 0.0 if key == "eta" else None)
    return Job(index=index, seed=seed, params=params)


def read_jobs(path: str | Path, base_seed: int = 0) -> list[Job]:
    """Every job of a JSON Lines (``.jsonl``, ``.json``, ``.ndjson``) or Parquet (``.parquet``) file, checked.

    JSON Lines: one object per line; blank lines are skipped and do not count as jobs.

    :raises difflux.cli.UsageError: the file is missing or empty, has an unknown extension, or a
        line is not valid JSON or not a valid job (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"jobs file {str(path)!r} does not exist (or is not a file)")
    suffix = path.suffix.lower()
    jobs: list[Job] = []
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:
            raise UsageError(f"jobs file {str(path)!r} is not a readable Parquet file: {exc}") from None
        for i, row in enumerate(rows):
            jobs.append(parse_job(row, len(jobs), base_seed, f"{path} row {i + 1}"))
    elif suffix in (".jsonl", ".json", ".ndjson"):
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UsageError(
                        f"{path} line {number}: not valid JSON ({exc.msg} at column {exc.colno})"
                    ) from None
                jobs.append(parse_job(data, len(jobs), base_seed, f"{path} line {number}"))
    else:
        raise UsageError(f"jobs file {str(path)!r}: use a .jsonl (one JSON object per line) or .parquet file")
    if not jobs:
        raise UsageError(f"jobs file {str(path)!r} holds no jobs")
    return jobs


def default_model(jobs: list[Job]) -> str:
    """The model ``difflux generate`` would pick: prompts -> the text-to-image model, else the digits model.

    :raises difflux.cli.UsageError: some jobs have a prompt and others none (one batch runs one model).
    """
    with_prompt = [j.index for j in jobs if "prompt" in j.params]
    if not with_prompt:
        return DEFAULT_MODEL
    if len(with_prompt) == len(jobs):
        return TEXT2IMG_MODEL
    without = next(j.index for j in jobs if "prompt" not in j.params)
    raise UsageError(
        f"job {with_prompt[0]} has a prompt and job {without} has none: one batch runs one model, "
        "so pass --model, or split the file"
    )
