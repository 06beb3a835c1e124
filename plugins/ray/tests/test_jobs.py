"""Jobs files: JSON Lines and Parquet read the same, every bad line is refused with where and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from difflux.cli import DEFAULT_MODEL, TEXT2IMG_MODEL, UsageError
from difflux_ray.jobs import Job, default_model, parse_job, read_jobs


def test_jsonl_and_parquet_give_the_same_jobs_with_per_index_seeds(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"prompt": "a 1", "seed": 7, "steps": 3},
        {"prompt": "a 2", "guidance_scale": 5, "num_inference_steps": 4},
        {"prompt": "a 3", "height": 16, "width": 24, "negative_prompt": "blurry"},
    ]
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    parquet = tmp_path / "jobs.parquet"
    keys = sorted({k for r in rows for k in r})
    pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in keys}), parquet)  # missing: nulls
    from_json, from_parquet = read_jobs(jsonl, base_seed=100), read_jobs(parquet, base_seed=100)
    assert from_json == from_parquet
    assert [j.seed for j in from_json] == [7, 101, 102]  # the blank line is not a job
    assert from_json[1].params == {"prompt": "a 2", "guidance_scale": 5.0, "num_inference_steps": 4}
    assert from_json[2].params == {"prompt": "a 3", "height": 16, "width": 24, "negative_prompt": "blurry"}
    assert Job.from_json(from_json[2].to_json()) == from_json[2]
    assert from_json[0].file == "000000.png"
    assert len({j.key for j in from_json}) == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "x", "colour": "red"}', "line 2: unknown key(s) ['colour']"),
        ('{"prompt": 3}', "line 2: 'prompt' must be a string, not 3"),
        ('{"prompt": "x", "seed": -1}', "line 2: 'seed' must be a whole number >= 0, not -1"),
        ('{"prompt": "x", "steps": 0}', "line 2: 'steps' must be a whole number >= 1, not 0"),
        ('{"prompt": "x", "steps": 2.5}', "'steps' must be a whole number >= 1, not 2.5"),
        ('{"prompt": "x", "height": 4}', "'height' must be a whole number >= 8, not 4"),
        ('{"prompt": "x", "guidance_scale": "high"}', "'guidance_scale' must be a finite number"),
        ('{"prompt": "x", "eta": -0.5}', "'eta' must be 0.0 or more"),
        ('{"class_label": [1, 2]}', "one job makes one image, so 'class_label' is one label"),
        ('{"steps": 2, "num_inference_steps": 2}', "give 'steps' or 'num_inference_steps', not both"),
        ('["a 1"]', "line 2: a job is a JSON object"),
        ('{"prompt": "x"', "line 2: not valid JSON"),
    ],
)
def test_a_bad_line_is_refused_naming_file_line_and_key(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(UsageError) as info:
        read_jobs(path)
    assert f"{path} " in str(info.value)
    assert message in str(info.value)


def test_bad_files_and_the_default_model(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        read_jobs(tmp_path / "missing.jsonl")
    (tmp_path / "jobs.csv").write_text("prompt\nx\n")
    with pytest.raises(UsageError, match=r"use a \.jsonl .* or \.parquet file"):
        read_jobs(tmp_path / "jobs.csv")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UsageError, match="holds no jobs"):
        read_jobs(tmp_path / "empty.jsonl")
    prompts = [parse_job({"prompt": "a"}, 0), parse_job({"prompt": "b"}, 1)]
    labels = [parse_job({"class_labels": [3]}, 0), parse_job({}, 1)]
    assert labels[0].params == {"class_labels": 3}
    assert default_model(prompts) == TEXT2IMG_MODEL
    assert default_model(labels) == DEFAULT_MODEL
    with pytest.raises(UsageError, match="job 0 has a prompt and job 1 has none"):
        default_model([prompts[0], labels[1]])
