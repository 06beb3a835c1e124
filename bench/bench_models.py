"""Benchmark difflux's UNet2DConditionModel against diffusers' on the CPU.

(a) load: an SD1.5-size UNet (random weights, ~3.4 GB of fp32 safetensors) is written once with
    diffusers; then separate subprocesses, one per library and interleaved, import the library,
    load the folder and read the weights, each timing itself and reporting its peak RSS
    (``ru_maxrss``). What a user pays before the first forward is the load plus reading every
    weight once, so the headline figure is ``load + touch``: ``from_pretrained`` plus reading one
    element in every 4 KiB page of every weight (every page of the file comes into memory). Also
    printed: the load alone, the load plus summing every element (``full``: arithmetic on ~0.9 G
    floats, the same work for both libraries) and import + load + touch. Each worker runs
    ``gc.collect()`` at the end of its (timed) import, so a collection owed to the import is not
    charged to the load.
(b) forward: both libraries load the same folder in one process and run a batch-2, 64x64-latent
    fp32 forward on the same inputs, back to back, ``--iters`` times (alternating which goes
    first); printed: the medians, the minima and the median of the per-pair ratios (the goal).

Both libraries map the safetensors file (no copy). Measured on a 2-core machine with the file in
the page cache: touching every page of the mapping costs 0.04 s to 0.5 s (less when the kernel holds
the file in large folios), and ``MADV_POPULATE_READ`` up front costs the same; reading the file with
``readinto`` into new tensors costs 2 s to 3 s (allocating, zeroing and copying 3.4 GB). So difflux
keeps the mapping, and ``touch`` costs both libraries the same.

Goals: load + touch <= 0.8x diffusers, peak RSS <= 1.2x the file size, forward <= 1.0x diffusers.

Usage::

    python bench/bench_models.py                 # both parts, full size (~10 GB of /tmp, minutes)
    python bench/bench_models.py --parts load    # one part
    python bench/bench_models.py --small         # a tiny UNet: a smoke check of the code paths
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: The published SD1.5 UNet config: diffusers' defaults plus these.
SD15: dict[str, Any] = {"sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8}
SMALL: dict[str, Any] = {
    "sample_size": 16,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "norm_num_groups": 8,
}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def write_model(folder: Path, config: dict[str, Any]) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.no_grad():
        model: Any = UNet2DConditionModel(**config)
    model.save_pretrained(folder)


# -- (a) the load worker: runs in its own process --------------------------------------------


def _page_touch(tensor: Any) -> float:
    """Read one element in every 4 KiB page of ``tensor`` (so every page is brought in)."""
    import torch

    flat = tensor.reshape(-1)
    return float(flat[:: max(1, 4096 // tensor.element_size())].sum(dtype=torch.float64))


def load_worker(library: str, folder: Path) -> dict[str, Any]:
    import gc

    t0 = time.perf_counter()
    import torch

    module = "difflux_models.unet_2d_condition" if library == "difflux" else "diffusers"
    unet_class: Any = importlib.import_module(module).UNet2DConditionModel
    gc.collect()
    t_import = time.perf_counter() - t0
    rss_after_import = peak_rss_bytes()
    t1 = time.perf_counter()
    model = unet_class.from_pretrained(folder)
    t_load = time.perf_counter() - t1
    t2 = time.perf_counter()
    with torch.no_grad():
        checksum = sum(_page_touch(t) for t in model.state_dict().values())
    t_touch = time.perf_counter() - t2
    rss_touched = peak_rss_bytes()
    t3 = time.perf_counter()
    with torch.no_grad():  # every element of every weight
        full = sum(float(t.sum(dtype=torch.float64)) for t in model.state_dict().values())
    t_full = time.perf_counter() - t3
    return {
        "library": library,
        "import_s": round(t_import, 3),
        "load_s": round(t_load, 3),
        "touch_s": round(t_touch, 3),
        "load_touch_s": round(t_load + t_touch, 3),
        "full_sum_s": round(t_full, 3),
        "load_full_s": round(t_load + t_full, 3),
        "import_load_touch_s": round(t_import + t_load + t_touch, 3),
        "peak_rss_bytes": rss_touched,
        "peak_rss_after_full_sum_bytes": peak_rss_bytes(),
        "rss_after_import_bytes": rss_after_import,
        "checksum": checksum,
        "full_checksum": full,
    }


_LOAD_FIGURES = ("load_touch_s", "load_s", "load_full_s", "import_load_touch_s", "touch_s", "full_sum_s", "import_s")


def run_load(folder: Path, repeats: int) -> dict[str, Any]:
    """``repeats`` rounds, each one worker per library (the order alternating); medians reported."""
    size = folder_bytes(folder)
    results: dict[str, list[dict[str, Any]]] = {"difflux": [], "diffusers": []}
    for i in range(repeats):
        order = ("diffusers", "difflux") if i % 2 == 0 else ("difflux", "diffusers")
        for library in order:
            cmd = [sys.executable, __file__, "--_worker", library, "--dir", str(folder)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
            results[library].append(json.loads(line))
    a_rows, b_rows = results["difflux"], results["diffusers"]
    a, b = a_rows[0], b_rows[0]
    for key in ("checksum", "full_checksum"):
        if abs(a[key] - b[key]) > 1e-6 * max(1.0, abs(b[key])):
            raise SystemExit(f"the two libraries read different weights: {key} {a[key]} vs {b[key]}")

    def median(rows: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    ours = {k: round(median(a_rows, k), 3) for k in _LOAD_FIGURES}
    theirs = {k: round(median(b_rows, k), 3) for k in _LOAD_FIGURES}
    rss = max(r["peak_rss_bytes"] for r in a_rows)
    rss_ref = max(r["peak_rss_bytes"] for r in b_rows)
    ratios = {k.removesuffix("_s"): round(ours[k] / theirs[k], 3) for k in _LOAD_FIGURES if theirs[k]}
    return {
        "part": "load",
        "file_bytes": size,
        "rounds": repeats,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "difflux_median": ours,
        "diffusers_median": theirs,
        "ratios": ratios,
        "all_difflux_load_touch_s": [r["load_touch_s"] for r in a_rows],
        "all_diffusers_load_touch_s": [r["load_touch_s"] for r in b_rows],
        "peak_rss_over_file": round(rss / size, 3),
        "diffusers_peak_rss_over_file": round(rss_ref / size, 3),
        "goals": {
            "load_touch_ratio<=0.8": ours["load_touch_s"] <= 0.8 * theirs["load_touch_s"],
            "peak_rss<=1.2x_file": rss <= 1.2 * size,
        },
    }


# -- (b) forward -----------------------------------------------------------------------------


def run_forward(folder: Path, config: dict[str, Any], iters: int, warmup: int) -> dict[str, Any]:
    import torch
    from difflux_models.unet_2d_condition import UNet2DConditionModel
    from diffusers import UNet2DConditionModel as DUNet

    ours = UNet2DConditionModel.from_pretrained(folder).eval()
    ref = DUNet.from_pretrained(folder).eval()
    g = torch.Generator().manual_seed(0)
    size = config["sample_size"]
    x = torch.randn(2, 4, size, size, generator=g)
    ctx = torch.randn(2, 77, config["cross_attention_dim"], generator=g)
    t = torch.tensor([999, 999])
    times: dict[str, list[float]] = {"difflux": [], "diffusers": []}
    outs: dict[str, Any] = {}
    models = {"difflux": ours, "diffusers": ref}
    with torch.inference_mode():
        for _ in range(warmup):
            for name, m in models.items():
                outs[name] = m(x, t, ctx).sample
        for i in range(iters):
            order = list(models) if i % 2 == 0 else list(reversed(models))
            for name in order:
                t0 = time.perf_counter()
                outs[name] = models[name](x, t, ctx).sample
                times[name].append(time.perf_counter() - t0)
    diff = (outs["difflux"] - outs["diffusers"]).abs().max().item()
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    # each iteration runs the two back to back: their ratio sees the same machine load
    pairs = [a / b for a, b in zip(times["difflux"], times["diffusers"], strict=True)]
    return {
        "part": "forward",
        "threads": torch.get_num_threads(),
        "batch": 2,
        "latent": size,
        "difflux_s": round(med["difflux"], 3),
        "diffusers_s": round(med["diffusers"], 3),
        "all_difflux_s": [round(v, 3) for v in times["difflux"]],
        "all_diffusers_s": [round(v, 3) for v in times["diffusers"]],
        "ratio": round(med["difflux"] / med["diffusers"], 3),
        "ratio_of_minima": round(best["difflux"] / best["diffusers"], 3),
        "median_pair_ratio": round(statistics.median(pairs), 3),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "max_abs_diff": diff,
        # judged on the back-to-back pairs: medians of separate runs mostly measure the machine's load
        "goals": {"median_pair_ratio<=1.0": statistics.median(pairs) <= 1.0},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="load,forward", help="comma-separated: load, forward")
    ap.add_argument("--small", action="store_true", help="a tiny UNet (smoke check)")
    ap.add_argument("--dir", type=Path, default=None, help="model folder (written if it has no config.json)")
    ap.add_argument("--keep", action="store_true", help="keep the model folder")
    ap.add_argument("--repeats", type=int, default=5, help="load rounds per library (medians are reported)")
    ap.add_argument("--iters", type=int, default=3, help="timed forwards per library")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_write", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        print(json.dumps(load_worker(args._worker, args.dir)), flush=True)
        return
    if args._write:
        write_model(args.dir, SMALL if args.small else SD15)
        return

    config = SMALL if args.small else SD15
    own_dir = args.dir is None
    folder = args.dir or Path(tempfile.mkdtemp(prefix="difflux_bench_models_"))
    try:
        if not (folder / "config.json").is_file():
            t0 = time.perf_counter()
            # In a child process: ru_maxrss survives fork+exec, so the parent must stay small.
            cmd = [sys.executable, __file__, "--_write", "--dir", str(folder)] + (["--small"] if args.small else [])
            subprocess.run(cmd, check=True)
            print(
                json.dumps(
                    {"part": "write", "seconds": round(time.perf_counter() - t0, 1), "file_bytes": folder_bytes(folder)}
                ),
                flush=True,
            )
        parts = {p.strip() for p in args.parts.split(",") if p.strip()}
        if "load" in parts:
            print(json.dumps(run_load(folder, args.repeats)), flush=True)
        if "forward" in parts:
            print(json.dumps(run_forward(folder, config, args.iters, args.warmup)), flush=True)
    finally:
        if own_dir and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
