"""unCLIP and Stable unCLIP, difflux against Diffusers in the same run (CPU, fp32).

Tiny random pipelines (the sizes of ``plugins/unclip/tests/conftest.py``): Diffusers builds them; unCLIP
runs as a Diffusers pipeline in memory (Diffusers cannot reload unCLIP folders) against difflux loading the
folder Diffusers saved; Stable unCLIP loads the same folder in both. 10 prior, 10 decoder and 4
super-resolution steps (unCLIP), 10 prior and 10 denoising steps at 32 px (Stable unCLIP); ``--repeat``
alternating calls after a warm-up; medians compared (goal: difflux / diffusers <= 0.9).
Run: ``python bench/bench_unclip.py [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "unclip" / "tests"))
import conftest as fixtures  # the tests' component builders


class _Factory:
    """What the fixtures need from pytest's ``tmp_path_factory``."""

    def __init__(self, root: Path) -> None:
        self.root, self.count = root, 0

    def mktemp(self, name: str) -> Path:
        self.count += 1
        path = self.root / f"{name}{self.count}"
        path.mkdir()
        return path


def _unwrap(fixture: Any) -> Any:
    return getattr(fixture, "__wrapped__", fixture)


def alternate(ours: Any, theirs: Any, kwargs: dict[str, Any], repeat: int) -> tuple[float, float, float]:
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    a = ours(**kwargs, generator=torch.Generator().manual_seed(0)).images
    b = theirs(**kwargs, generator=torch.Generator().manual_seed(0)).images
    diff = float(np.abs(np.asarray(a) - np.asarray(b)).max())
    t_ours, t_theirs = [], []
    for _ in range(repeat):
        for pipe, times in ((ours, t_ours), (theirs, t_theirs)):
            start = time.perf_counter()
            pipe(**kwargs, generator=torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_theirs), diff


def main() -> None:
    import difflux
    import diffusers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context():
        factory = _Factory(Path(tmp))
        parts = _unwrap(fixtures.unclip_parts)(factory)
        pipes = _unwrap(fixtures.unclip_pipes)(factory, parts)
        stable = _unwrap(fixtures.stable_unclip_folders)(factory, parts)
        theirs, folder = pipes["UnCLIPPipeline"]
        cases = [
            (
                "unCLIP text-to-image (10 prior + 10 decoder + 4 super-res steps, 32 px)",
                difflux.DiffusionPipeline.from_pretrained(folder),
                theirs,
                {"prompt": "a red cat", "prior_num_inference_steps": 10, "decoder_num_inference_steps": 10,
                 "super_res_num_inference_steps": 4, "output_type": "np"},
            ),
            (
                "Stable unCLIP (10 prior + 10 steps, 32 px)",
                difflux.DiffusionPipeline.from_pretrained(stable["StableUnCLIPPipeline"]),
                diffusers.DiffusionPipeline.from_pretrained(stable["StableUnCLIPPipeline"]),
                {"prompt": "a red cat", "prior_num_inference_steps": 10, "num_inference_steps": 10,
                 "height": 32, "width": 32, "output_type": "np"},
            ),
        ]  # fmt: skip
        for title, ours, ref, kwargs in cases:
            a, b, diff = alternate(ours, ref, kwargs, args.repeat)
            print(f"tiny {title}, CPU fp32 (median of {args.repeat})")
            print(
                f"  diffusers {b * 1000:8.1f} ms   difflux {a * 1000:8.1f} ms   ratio difflux/diffusers "
                f"{a / b:.2f} (goal <= 0.9)   max |image diff| {diff:.2e}"
            )


if __name__ == "__main__":
    main()
