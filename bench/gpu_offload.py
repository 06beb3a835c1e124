"""Offload on a GPU: an SD1.5-size pipeline (random weights at the published configs, fp16, 512x512)
with model offload, sequential offload and group offload + streams, difflux against Diffusers' same
mode on the same card. Prints peak GPU memory and call time per mode, and the ratios.

Goals (issue 12): model offload peaks at the largest component plus activations; sequential
offload stays under 1 GB; group offload with streams takes at most Diffusers' time at no more memory.

``--tiny --device cpu`` is a smoke mode (tiny pipeline, fp32, 2 steps, no streams) that checks the
script runs where there is no GPU; it prints times only.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sd import save_pipeline

MODES = ("model", "sequential", "group")


def enable(pipe: Any, mode: str, device: str, use_stream: bool) -> None:
    """The same switch on either library (both take these keyword names)."""
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.enable_group_offload(
            onload_device=torch.device(device),
            offload_device=torch.device("cpu"),
            offload_type="block_level",
            num_blocks_per_group=1,
            use_stream=use_stream,
        )


def load(lib: str, folder: Path, dtype: torch.dtype) -> Any:
    if lib == "difflux":
        import difflux

        pipe = difflux.DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype)
    else:
        import diffusers

        pipe = diffusers.DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(lib: str, folder: Path, mode: str, args: argparse.Namespace, dtype: torch.dtype) -> tuple[float, float]:
    """(median call seconds, peak GPU GiB) of one library in one mode."""
    cuda = args.device.startswith("cuda")
    pipe = load(lib, folder, dtype)
    enable(pipe, mode, args.device, use_stream=cuda)
    steps = args.steps if mode != "sequential" else max(2, args.steps // 4)
    kw = {"prompt": "a photo of a cat", "num_inference_steps": steps, "height": args.px, "width": args.px,
          "output_type": "np"}
    pipe(**{**kw, "num_inference_steps": 1}, generator=torch.Generator().manual_seed(0))  # warm-up, records order
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        pipe(**kw, generator=torch.Generator().manual_seed(0))
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    del pipe
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    times.sort()
    return times[len(times) // 2] / steps, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="smoke mode: tiny pipeline, fp32, 2 steps")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    size = "tiny" if args.tiny else "sd15"
    dtype = torch.float32 if args.tiny or args.device == "cpu" else torch.float16
    args.px = 64 if args.tiny else 512
    if args.tiny:
        args.steps = 2
    with tempfile.TemporaryDirectory(prefix="difflux-gpu-offload-") as tmp:
        folder = save_pipeline(size, Path(tmp))
        unet = load("difflux", folder, dtype).unet
        unet_gib = sum(p.numel() * p.element_size() for p in unet.parameters()) / 2**30
        del unet
        print(f"{size} {args.px}x{args.px} {dtype} {args.device}; UNet weights {unet_gib:.2f} GiB; "
              "s/step is call time / steps")
        for mode in args.modes.split(","):
            ours_t, ours_m = run("difflux", folder, mode, args, dtype)
            try:
                theirs_t, theirs_m = run("diffusers", folder, mode, args, dtype)
            except Exception as exc:  # Diffusers' sequential offload cannot run with a CPU execution device
                print(f"{mode:>10}: difflux {ours_t:.3f} s/step peak {ours_m:.2f} GiB | diffusers failed: {exc!r:.120}")
                continue
            print(
                f"{mode:>10}: difflux {ours_t:.3f} s/step peak {ours_m:.2f} GiB | diffusers {theirs_t:.3f} s/step "
                f"peak {theirs_m:.2f} GiB | time ratio {ours_t / theirs_t:.2f} memory ratio "
                f"{ours_m / theirs_m if theirs_m == theirs_m and theirs_m else float('nan'):.2f}"
            )


if __name__ == "__main__":
    main()
