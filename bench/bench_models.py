"""Benchmark difflux's UNet2DConditionModel against diffusers' on the CPU.

(a) load: an SD1.5-size UNet (random weights, ~3.4 GB of fp32 safetensors) is written once with
    diffusers; then separate subprocesses, one per library, load it and read every weight, each
    timing itself and reporting its peak RSS (``ru_maxrss``).
(b) forward: both libraries load the same folder in one process and run a batch-2, 64x64-latent
    fp32 forward on the same inputs; the median of ``--iters`` runs each, interleaved.

Goals: load time <= 0.8x diffusers, peak RSS <= 1.2x the file size, forward <= 1.0x diffusers.

Usage::

    python bench/bench_models.py                 # both parts, full size (~10 GB of /tmp, minutes)
    python bench/bench_models.py --parts load    # one part
    python bench/bench_models.py --small         # a tiny UNet: a smoke check of the code paths
"""

from __future__ import annotations

import argparse
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
        model = UNet2DConditionModel(**config)
    model.save_pretrained(folder)


# -- (a) the load worker: runs in its own process --------------------------------------------


def load_worker(library: str, folder: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    import torch

    if library == "difflux":
        from difflux_models.unet_2d_condition import UNet2DConditionModel
    else:
        from diffusers import UNet2DConditionModel
    t_import = time.perf_counter() - t0
    rss_after_import = peak_rss_bytes()
    t1 = time.perf_counter()
    model = UNet2DConditionModel.from_pretrained(folder)
    t_load = time.perf_counter() - t1
    t2 = time.perf_counter()
    with torch.no_grad():
        checksum = sum(float(t.reshape(-1)[0]) for t in model.state_dict().values())
    t_read = time.perf_counter() - t2
    rss_touched = peak_rss_bytes()
    t3 = time.perf_counter()
    with torch.no_grad():  # every byte of every weight, not just one element
        full = sum(float(t.float().sum()) for t in model.state_dict().values())
    t_full = time.perf_counter() - t3
    return {
        "library": library,
        "import_s": round(t_import, 3),
        "load_s": round(t_load, 3),
        "read_s": round(t_read, 3),
        "load_and_read_s": round(t_load + t_read, 3),
        "full_read_s": round(t_full, 3),
        "peak_rss_bytes": rss_touched,
        "peak_rss_after_full_read_bytes": peak_rss_bytes(),
        "rss_after_import_bytes": rss_after_import,
        "checksum": checksum,
        "full_checksum": full,
    }


def run_load(folder: Path, repeats: int) -> dict[str, Any]:
    size = folder_bytes(folder)
    results: dict[str, list[dict[str, Any]]] = {"difflux": [], "diffusers": []}
    for _ in range(repeats):
        for library in ("diffusers", "difflux"):
            cmd = [sys.executable, __file__, "--_worker", library, "--dir", str(folder)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
            results[library].append(json.loads(line))
    best = {lib: min(rows, key=lambda r: r["load_and_read_s"]) for lib, rows in results.items()}
    a, b = best["difflux"], best["diffusers"]
    if abs(a["checksum"] - b["checksum"]) > 1e-3 * max(1.0, abs(b["checksum"])):
        raise SystemExit(f"the two libraries read different weights: {a['checksum']} vs {b['checksum']}")
    report = {
        "part": "load",
        "file_bytes": size,
        "difflux": {k: v for k, v in a.items() if k != "library"},
        "diffusers": {k: v for k, v in b.items() if k != "library"},
        "time_ratio": round(a["load_and_read_s"] / b["load_and_read_s"], 3),
        "peak_rss_over_file": round(a["peak_rss_bytes"] / size, 3),
        "diffusers_peak_rss_over_file": round(b["peak_rss_bytes"] / size, 3),
        "peak_rss_ratio_vs_diffusers": round(a["peak_rss_bytes"] / b["peak_rss_bytes"], 3),
        "goals": {
            "time_ratio<=0.8": a["load_and_read_s"] <= 0.8 * b["load_and_read_s"],
            "peak_rss<=1.2x_file": a["peak_rss_bytes"] <= 1.2 * size,
        },
    }
    return report


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
        "max_abs_diff": diff,
        "goals": {"ratio<=1.0": med["difflux"] <= med["diffusers"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", default="load,forward", help="comma-separated: load, forward")
    ap.add_argument("--small", action="store_true", help="a tiny UNet (smoke check)")
    ap.add_argument("--dir", type=Path, default=None, help="model folder (written if it has no config.json)")
    ap.add_argument("--keep", action="store_true", help="keep the model folder")
    ap.add_argument("--repeats", type=int, default=2, help="load runs per library (best is reported)")
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
