"""``run_batch`` in one process (the local engine): pixels as a direct call makes them, resume after a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from difflux.cli import UsageError
from difflux_ray.batch import MANIFEST, run_batch
from difflux_ray.jobs import read_jobs
from difflux_ray.testing import MODEL, STEPS, expected_png_pixels, png_pixels, write_jobs


class Crash(Exception):
    pass


def _records(output: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (output / MANIFEST).read_text().splitlines()]


def test_local_batch_writes_each_image_as_a_direct_call_makes_it(text2img: Any, tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", 3)
    seen: list[int] = []
    report = run_batch(
        jobs, tmp_path / "out", engine="local", base_seed=40, loader=lambda config: text2img, progress=False,
        on_record=lambda r: seen.append(r["index"]),
    )  # fmt: skip
    assert (report.total, report.skipped, report.made, report.actors) == (3, 0, 3, 1)
    assert seen == [0, 1, 2]
    records = _records(tmp_path / "out")
    assert [r["index"] for r in records] == [0, 1, 2]
    first = records[0]
    assert first["file"] == "images/000000.png" and first["seed"] == 40 and first["model"] == MODEL
    assert first["params"] == {"prompt": "a handwritten 0", "num_inference_steps": STEPS}
    assert first["seconds"] > 0
    for record in records:
        got = png_pixels(tmp_path / "out" / record["file"])
        want = expected_png_pixels(text2img, record["params"]["prompt"], record["seed"])
        np.testing.assert_array_equal(got, want)
    assert not list((tmp_path / "out" / "images").glob(".*partial"))


def test_a_crashed_batch_resumes_without_redoing_or_repeating_a_job(text2img: Any, tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", 6)
    out = tmp_path / "out"

    def crash_at_third(record: dict[str, Any]) -> None:
        if record["index"] == 2:
            raise Crash

    with pytest.raises(Crash):
        run_batch(jobs, out, engine="local", loader=lambda c: text2img, progress=False, on_record=crash_at_third)
    assert [r["index"] for r in _records(out)] == [0, 1, 2]
    done = {i: (out / "images" / f"{i:06d}.png").stat().st_mtime_ns for i in range(3)}
    with (out / MANIFEST).open("a") as manifest:
        manifest.write('{"index": 3, "file": "ima')  # the crash cut this record short
    (out / "images" / "000004.png").write_bytes(b"half an image")  # written, never recorded
    report = run_batch(jobs, out, engine="local", loader=lambda c: text2img, progress=False)
    assert (report.total, report.skipped, report.made) == (6, 3, 3)
    records = _records(out)
    assert sorted(r["index"] for r in records) == list(range(6))  # each once, the torn line gone
    assert {i: (out / "images" / f"{i:06d}.png").stat().st_mtime_ns for i in range(3)} == done  # not redone
    np.testing.assert_array_equal(
        png_pixels(out / "images" / "000004.png"), expected_png_pixels(text2img, "a handwritten 4", 4)
    )
    again = run_batch(jobs, out, engine="local", loader=lambda c: text2img, progress=False)
    assert (again.skipped, again.made) == (6, 0)


def test_resuming_with_other_jobs_or_model_is_refused(text2img: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_batch(write_jobs(tmp_path / "a.jsonl", 1), out, engine="local", loader=lambda c: text2img, progress=False)
    other = write_jobs(tmp_path / "b.jsonl", 1, guidance_scale=3.0)
    with pytest.raises(UsageError, match="holds a batch of other jobs or another model"):
        run_batch(other, out, engine="local", loader=lambda c: text2img, progress=False)
    with pytest.raises(UsageError, match="holds a batch of other jobs or another model"):
        run_batch(tmp_path / "a.jsonl", out, model="some/other", engine="local", loader=lambda c: text2img)
    with pytest.raises(UsageError, match="--engine 'spark'"):
        run_batch(tmp_path / "a.jsonl", out, engine="spark")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file; name a folder"):
        run_batch(tmp_path / "a.jsonl", tmp_path / "file", engine="local")


def test_a_job_the_pipeline_does_not_take_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"class_label": 3}\n')
    with pytest.raises(UsageError, match=r"job 0: StableDiffusionPipeline does not take \['class_labels'\]"):
        run_batch(jobs, tmp_path / "out", model=MODEL, engine="local")
    assert read_jobs(jobs)[0].params == {"class_labels": 3}
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_job_the_pipeline_refuses_fails_alone_and_the_fixed_file_resumes(text2img: Any, tmp_path: Path) -> None:
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    lines = [{"prompt": "a 1", "steps": STEPS}, {"prompt": "a 2", "steps": STEPS, "height": 12}, {"prompt": "a 3"}]
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(UsageError, match=r"1 job\(s\) refused by the pipeline, first job 1: ValueError: .*12") as info:
        run_batch(jobs, out, engine="local", loader=lambda c: text2img, progress=False)
    assert "the other 2 image(s) are recorded" in str(info.value)
    assert sorted(r["index"] for r in _records(out)) == [0, 2]
    assert not (out / "images" / "000001.png").exists()
    lines[1]["height"] = 16
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = run_batch(jobs, out, engine="local", loader=lambda c: text2img, progress=False)
    assert (report.skipped, report.made) == (2, 1)
