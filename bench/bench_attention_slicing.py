"""Attention slicing on the CPU: peak memory and wall time of an SD1.5-size UNet forward.

An SD1.5-size ``UNet2DConditionModel`` (random weights, seed 0, fp32, ~3.4 GB of safetensors) is
written once with Diffusers; then one subprocess per run loads that folder and runs a batch-2,
64x64-latent forward (77 text tokens of width 768), with

- difflux, plain (automatic backend: SDPA),
- difflux, ``enable_attention_slicing("max")`` (the ``sliced`` backend: one head at a time, SDPA per slice),
- Diffusers, plain (``AttnProcessor2_0``: SDPA),
- Diffusers, ``set_attention_slice("max")`` (``SlicedAttnProcessor``: one head at a time, baddbmm + softmax),

in that interleaved order. Each worker first runs an 8x8 forward (brings every weight page of
the memory-mapped file in, warms the kernels), then resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), times the 64x64 forward and reads the peak (``VmHWM``), while a
thread samples the anonymous memory (``RssAnon``, every 2 ms: the tensors, without the mapped
weight pages that memory pressure elsewhere can evict and fault back in). Printed: the peak RSS,
the forward's extra RSS and extra anonymous memory over what was there before it, the time, the ratios
sliced/plain and difflux/Diffusers, and the largest difference between the four outputs
(the same weights and inputs; the slicing must not change the numbers).

Usage::

    python bench/bench_attention_slicing.py            # full size (3.4 GB in /tmp, ~3 minutes on 2 cores)
    python bench/bench_attention_slicing.py --small    # a tiny UNet: a smoke check of the code paths
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The SD1.5 UNet config and the tiny one, as the model bench defines them (run as a script, bench/ is on sys.path).
from bench_models import SD15, SMALL

RUNS = (("difflux", "plain"), ("diffusers", "plain"), ("difflux", "max"), ("diffusers", "max"))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class AnonPeak:
    """Samples ``RssAnon`` (anonymous memory: tensors, not the memory-mapped weights, whose pages
    the kernel may drop and fault back in under memory pressure) every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002) -> None:
        import threading

        self.interval = interval
        self.peak = _status_kib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kib("RssAnon"))
            self._stop.wait(self.interval)

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kib("RssAnon"))


def write_model(folder: Path, config: dict[str, Any]) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.no_grad():
        model: Any = UNet2DConditionModel(**config)
    model.save_pretrained(folder)


def worker(library: str, mode: str, folder: Path, out_file: Path) -> dict[str, Any]:
    import torch

    if library == "difflux":
        from difflux_models.unet_2d_condition import UNet2DConditionModel
    else:
        from diffusers import UNet2DConditionModel  # type: ignore[no-redef]
    config = json.loads((folder / "config.json").read_text())
    model: Any = UNet2DConditionModel.from_pretrained(folder).eval()
    if mode == "max":
        if library == "difflux":
            model.enable_attention_slicing("max")
        else:
            model.set_attention_slice("max")
    g = torch.Generator().manual_seed(0)
    size, width = config["sample_size"], config["cross_attention_dim"]
    x = torch.randn(2, 4, size, size, generator=g)
    ctx = torch.randn(2, 77, width, generator=g)
    t = torch.tensor([999, 999])
    with torch.inference_mode():
        model(torch.randn(2, 4, 8, 8, generator=g), t, ctx)  # every weight page in, kernels warm
        before = _status_kib("VmRSS")
        anon_before = _status_kib("RssAnon")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            reset = True
        except OSError:
            reset = False
        with AnonPeak() as anon:
            t0 = time.perf_counter()
            out = model(x, t, ctx).sample
            seconds = time.perf_counter() - t0
        peak = _status_kib("VmHWM")
    torch.save(out, out_file)
    return {
        "library": library,
        "mode": mode,
        "forward_s": round(seconds, 3),
        "peak_rss_mib": round(peak / 1024, 1),
        "forward_extra_mib": round((peak - before) / 1024, 1) if reset else None,
        "forward_anon_extra_mib": round((anon.peak - anon_before) / 1024, 1),
        "rss_before_mib": round(before / 1024, 1),
        "peak_reset": reset,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny UNet (smoke check)")
    parser.add_argument("--dir", type=Path, help="where to write the model (default: a temporary folder)")
    parser.add_argument("--_worker", nargs=3, metavar=("LIBRARY", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._worker:
        library, mode, out = args._worker
        print(json.dumps(worker(library, mode, args.dir, Path(out))))
        return

    import torch

    config = SMALL if args.small else SD15
    tmp = Path(tempfile.mkdtemp(prefix="bench-attn-slicing-"))
    folder = args.dir or tmp / "unet"
    try:
        t0 = time.perf_counter()
        if not (folder / "config.json").exists():
            write_model(folder, config)
        print(f"model written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for library, mode in RUNS:
            out_file = tmp / f"{library}-{mode}.pt"
            cmd = [sys.executable, __file__, "--dir", str(folder), "--_worker", library, mode, str(out_file)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows[(library, mode)] = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
            print(json.dumps(rows[(library, mode)]), file=sys.stderr)
        outs = {key: torch.load(tmp / f"{key[0]}-{key[1]}.pt") for key in RUNS}
        base = outs[("diffusers", "plain")]
        diffs = {f"{lib}-{mode}": float((o - base).abs().max()) for (lib, mode), o in outs.items()}

        def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
            return round(a[key] / b[key], 3) if a.get(key) and b.get(key) else None

        figures = ("peak_rss_mib", "forward_extra_mib", "forward_anon_extra_mib", "forward_s")
        report = {
            "config": "small" if args.small else "sd1.5",
            "batch": 2,
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "runs": {f"{lib}-{mode}": rows[(lib, mode)] for lib, mode in RUNS},
            "sliced_over_plain": {
                lib: {k: ratio(rows[(lib, "max")], rows[(lib, "plain")], k) for k in figures}
                for lib in ("difflux", "diffusers")
            },
            "difflux_over_diffusers": {
                mode: {k: ratio(rows[("difflux", mode)], rows[("diffusers", mode)], k) for k in figures}
                for mode in ("plain", "max")
            },
            "max_abs_diff_vs_diffusers_plain": diffs,
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
