"""Memory switches on the CPU, difflux against Diffusers in the same run, same inputs.

1. Offload overhead: a tiny SD pipeline (2 steps, 64x64) plain and with model, group (block level)
   and sequential offload, with the CPU as execution device (so only the hooks' cost shows),
   median of ``--repeat`` interleaved calls; ratios difflux/diffusers.
2. Loading under a memory limit: an SD1.5-size VAE (random weights, the published config, fp32,
   safetensors) loaded plain and with ``device_map="auto", max_memory={"cpu": LIMIT},
   offload_folder=...``; each load in a fresh process; peak RSS growth during the load, load time,
   one decode of a 1x4x16x16 latent, and the largest difference between the two libraries' images.

CPU-only; a few minutes on two busy cores. The timings are noisy when the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = ("plain", "model", "group", "sequential")
LIMIT = 64 * 2**20  # bytes of CPU memory the VAE may take when loaded with a device map


# -- 1. offload overhead ------------------------------------------------------------------------


def enable(pipe: Any, mode: str) -> None:
    if mode == "model":
        pipe.enable_model_cpu_offload(device="cpu")
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device="cpu")
    elif mode == "group":
        pipe.enable_group_offload(
            onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1, use_stream=False
        )


def overhead(repeat: int) -> None:
    import difflux
    import diffusers
    from bench_sd import save_pipeline

    kw = {"prompt": "a photo of a cat", "num_inference_steps": 2, "height": 64, "width": 64, "output_type": "np"}
    with tempfile.TemporaryDirectory(prefix="difflux-bench-memory-") as tmp:
        folder = save_pipeline("tiny", Path(tmp))
        print("offload overhead: tiny SD, 2 steps 64x64, fp32, execution device cpu (median s per call)")
        plain: dict[str, float] = {}
        for mode in MODES:
            pipes = {
                "difflux": difflux.DiffusionPipeline.from_pretrained(folder),
                "diffusers": diffusers.DiffusionPipeline.from_pretrained(folder),
            }
            times: dict[str, list[float]] = {name: [] for name in pipes}
            failed: dict[str, str] = {}
            for name, pipe in pipes.items():
                pipe.set_progress_bar_config(disable=True)
                try:
                    enable(pipe, mode)
                    pipe(**kw, generator=torch.Generator().manual_seed(0))  # warm-up
                except Exception as exc:
                    failed[name] = repr(exc)[:100]
            for _ in range(repeat):
                for name, pipe in pipes.items():
                    if name in failed:
                        continue
                    start = time.perf_counter()
                    pipe(**kw, generator=torch.Generator().manual_seed(0))
                    times[name].append(time.perf_counter() - start)
            med = {name: statistics.median(t) for name, t in times.items() if t}
            if mode == "plain":
                plain = dict(med)
            parts = []
            for name in pipes:
                if name in failed:
                    parts.append(f"{name} failed: {failed[name]}")
                else:
                    parts.append(f"{name} {med[name]:.3f}s (x{med[name] / plain[name]:.2f} of plain)")
            ratio = f"ratio {med['difflux'] / med['diffusers']:.2f}" if len(med) == 2 else "ratio n/a"
            print(f"  {mode:>10}: " + " | ".join(parts) + f" | {ratio}")


# -- 2. loading under a memory limit ---------------------------------------------------------------


def save_vae(folder: Path) -> Path:
    import diffusers

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    vae.save_pretrained(folder / "vae")
    return folder / "vae"


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """The largest resident set size seen while the block runs (sampled every 2 ms), above the start."""

    def __enter__(self) -> PeakRSS:
        import threading

        self.start = _rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def child(lib: str, case: str, folder: str, out: str) -> None:
    """Runs in a fresh process: load, decode once, write figures and the image."""
    if lib == "difflux":
        from difflux_models import AutoencoderKL
    else:
        from diffusers import AutoencoderKL
    kwargs: dict[str, Any] = {}
    if case == "device_map":
        kwargs = {"device_map": "auto", "max_memory": {"cpu": LIMIT}, "offload_folder": out + ".offload"}
    torch.set_grad_enabled(False)
    latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    before = _rss()
    with PeakRSS() as whole:
        with PeakRSS() as loading:
            start = time.perf_counter()
            vae = AutoencoderKL.from_pretrained(folder, **kwargs)
            load = time.perf_counter() - start
        start = time.perf_counter()
        image = vae.decode(latent).sample
        decode = time.perf_counter() - start
    np.save(out + ".npy", image.float().numpy())
    figures = {
        "load": load,
        "decode": decode,
        "peak": loading.growth,
        "run_peak": whole.growth,
        "held": _rss() - before,
    }
    with open(out + ".json", "w") as fh:
        json.dump(figures, fh)


def loading() -> None:
    with tempfile.TemporaryDirectory(prefix="difflux-bench-memory-") as tmp:
        folder = save_vae(Path(tmp))
        size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
        print(f"loading an SD1.5-size VAE ({size / 2**20:.0f} MiB of safetensors), each in a fresh process; "
              f"device_map='auto' with max_memory cpu={LIMIT / 2**20:.0f} MiB and an offload_folder")
        results: dict[tuple[str, str], dict[str, float]] = {}
        for case in ("plain", "device_map"):
            for lib in ("difflux", "diffusers"):
                out = str(Path(tmp) / f"{lib}-{case}")
                subprocess.run([sys.executable, __file__, "--child", lib, case, str(folder), out], check=True)
                with open(out + ".json") as fh:
                    results[lib, case] = json.load(fh)
                results[lib, case]["image"] = out + ".npy"  # type: ignore[assignment]
        for case in ("plain", "device_map"):
            a, b = results["difflux", case], results["diffusers", case]
            diff = float(np.abs(np.load(a["image"]) - np.load(b["image"])).max())  # type: ignore[arg-type]
            print(
                f"  {case:>10}: peak RSS growth in load+decode difflux {a['run_peak'] / 2**20:.0f} MiB vs "
                f"diffusers {b['run_peak'] / 2**20:.0f} MiB (ratio {a['run_peak'] / max(b['run_peak'], 1):.2f}), "
                f"in the load "
                f"alone {a['peak'] / 2**20:.0f} vs {b['peak'] / 2**20:.0f} MiB; resident after decode "
                f"{a['held'] / 2**20:.0f} vs {b['held'] / 2**20:.0f} MiB; load {a['load']:.2f}s vs {b['load']:.2f}s "
                f"(ratio {a['load'] / b['load']:.2f}); decode {a['decode']:.2f}s vs {b['decode']:.2f}s "
                f"(ratio {a['decode'] / b['decode']:.2f}); max |difflux - diffusers| {diff:.1e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("overhead", "loading"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.only in (None, "overhead"):
        overhead(args.repeat)
    if args.only in (None, "loading"):
        loading()


if __name__ == "__main__":
    main()
