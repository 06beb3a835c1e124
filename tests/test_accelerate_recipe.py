"""The several-GPUs recipe (``accelerate launch`` + ``PartialState().split_between_processes``) with difflux
pipelines, run as 2 CPU processes over gloo: each process makes its share, and the images equal a one-process run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.mark.slow  # two processes, each importing torch and loading the model: ~13 s CPU
def test_accelerate_launch_splits_the_prompts_and_matches_one_process(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        str(ROOT / "examples" / "accelerate_batch.py"), "--output", str(out), "--count", "6", "--steps", "2", "--check",
    ]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # CPU processes even on a GPU machine
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    made = re.findall(r"process (\d)/2 made image (\d)", done.stdout)
    assert sorted(int(i) for _, i in made) == list(range(6))  # every image once
    assert {p for p, _ in made} == {"0", "1"}  # both processes worked
    assert "all 6 images equal a one-process run (2 processes)" in done.stdout
    assert all(np.load(out / f"{i:06d}.npy").shape == (16, 16, 3) for i in range(6))
