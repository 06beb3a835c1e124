"""On a local Ray cluster (2 CPUs): a batch over 2 actors makes the pixels one process makes; a killed actor
is restarted and every job is recorded once; the images API on Ray Serve answers the openai client."""

from __future__ import annotations

import base64
import functools
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from difflux_ray.batch import MANIFEST, run_batch
from difflux_ray.testing import MODEL, STEPS, expected_png_pixels, killing_loader, png_pixels, write_jobs


def _check_against_one_process(pipe: Any, out: Path, count: int) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert sorted(r["index"] for r in records) == list(range(count))  # every job, each once
    for record in records:
        want = expected_png_pixels(pipe, record["params"]["prompt"], record["seed"])
        np.testing.assert_array_equal(png_pixels(out / record["file"]), want)
    return records


# the one Ray test of the default run: a 2-CPU cluster and two actors, ~14 s CPU in all
def test_a_batch_over_two_actors_makes_the_images_one_process_makes(
    ray_cluster: Any, text2img: Any, tmp_path: Path
) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", 8)
    report = run_batch(jobs, tmp_path / "out", engine="ray", actors=2, progress=False)
    assert (report.total, report.made, report.actors) == (8, 8, 2)
    records = _check_against_one_process(text2img, tmp_path / "out", 8)
    assert all(r["model"] == MODEL and r["params"]["num_inference_steps"] == STEPS for r in records)
    assert len({r["worker"] for r in records}) <= 2


@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_every_job_is_recorded_once(
    ray_cluster: Any, text2img: Any, tmp_path: Path
) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", 8)
    marker = tmp_path / "killed"
    loader = functools.partial(killing_loader, prompt="a handwritten 5", marker=str(marker))
    report = run_batch(jobs, tmp_path / "out", engine="ray", actors=2, loader=loader, model=MODEL, progress=False)
    killed = int(marker.read_text())  # the actor really died mid-batch
    assert report.made == 8
    records = _check_against_one_process(text2img, tmp_path / "out", 8)
    assert next(r for r in records if r["index"] == 5)["worker"] != killed


@pytest.mark.slow
def test_the_images_api_on_ray_serve_answers_the_openai_client_with_batched_requests(
    ray_cluster: Any, text2img: Any
) -> None:
    import openai
    import requests
    from difflux_ray.server import Limits
    from difflux_ray.serving import RayServeConfig, serve_ray

    port = 8917
    config = RayServeConfig(replicas=1, max_batch_size=4, batch_wait_s=0.05)
    serve_ray(MODEL, port=port, limits=Limits(max_n=2), config=config, blocking=False)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")

    def one(i: int) -> Any:
        return client.images.generate(prompt=f"a handwritten {i}", extra_body={"steps": STEPS, "seed": i})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, range(4)))
    for i, answer in enumerate(answers):
        import PIL.Image

        got = np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(answer.data[0].b64_json))).convert("RGB"))
        want = expected_png_pixels(text2img, f"a handwritten {i}", i)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # batched with others: float rounding only
    bad = requests.post(f"http://127.0.0.1:{port}/v1/images/generations", json={"prompt": "x", "n": 3}, timeout=60)
    assert bad.status_code == 400
    assert bad.json()["error"] == {
        "message": "n must be between 1 and 2, not 3", "type": "invalid_request_error", "param": "n", "code": None
    }  # fmt: skip
    from ray import serve

    serve.shutdown()
