"""CPU benchmark of the fast path: SD1.5-size UNet forward, batch 2, 64x64 latents.

Rows (each a ``--case``): Diffusers eager (the baseline, always measured), difflux eager,
difflux ``optimize()`` (mode ``"default"``), difflux ``optimize("max")`` (adds bf16 autocast on a
bf16-capable CPU), ``max-no-compile``: ``optimize("max")`` without ``regional_compile``, Diffusers
with ``torch.compile`` (``channels_last``, ``fullgraph=True``), and
``cache``: the first-forward time of a second process that loads the compile cache written by a
first one (each process with an empty inductor cache). Random weights at the published config,
the same weights and inputs for both libraries. Ratios are against Diffusers eager of this run.

Usage::

    python bench/bench_optimize.py                               # fp32: eager, optimize
    python bench/bench_optimize.py --dtype bf16 --case eager,optimize
    python bench/bench_optimize.py --case diffusers-compile      # slow: compiles the whole UNet
    python bench/bench_optimize.py --case cache                  # two extra processes
    python bench/bench_optimize.py --small                       # a tiny UNet (smoke check)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_models import SD15, TINY, median_time, unet_inputs

CASES = ("eager", "optimize", "optimize-max", "max-no-compile", "diffusers-compile", "cache")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def diffusers_unet(config: dict[str, Any], dev: str, dtype: torch.dtype) -> Any:
    """A seeded random Diffusers UNet at ``config`` (built on ``dev``: fast on a GPU)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(dev):
        ref = UNet2DConditionModel(**config)
    return ref.to(dtype).eval()


def ours_from(ref: torch.nn.Module) -> torch.nn.Module:
    """A fresh difflux UNet holding ``ref``'s weights (shared storage; optimize() replaces, never writes them)."""
    from difflux_models.unet_2d_condition import UNet2DConditionModel

    with torch.device("meta"):
        ours = UNet2DConditionModel(**{k: v for k, v in dict(ref.config).items() if not k.startswith("_")})
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return ours.eval()


def timed_first(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def max_diff(a: Any, b: Any) -> float:
    return float((a.float() - b.float()).abs().max())


class Table:
    """Rows of ``(name, ms, compile s, max |diff| vs diffusers eager)``, printed with ratios."""

    def __init__(self, title: str, unit: str = "ms/forward") -> None:
        self.title = title
        self.unit = unit
        self.rows: list[tuple[str, float, float | None, float | None]] = []

    def add(self, name: str, seconds: float, compile_s: float | None = None, diff: float | None = None) -> None:
        self.rows.append((name, seconds * 1e3, compile_s, diff))
        print(
            json.dumps({"row": name, "ms": round(seconds * 1e3, 3), "compile_s": compile_s, "diff": diff}), flush=True
        )

    def print(self, baseline: str = "diffusers eager") -> None:
        base = next((ms for n, ms, _, _ in self.rows if n == baseline), None)
        print(f"\n{self.title}")
        print(f"| {'case':<28} | {self.unit:>10} | {'vs ' + baseline:>20} | {'compile s':>9} | {'max |diff|':>10} |")
        print(f"|{'-' * 30}|{'-' * 11}:|{'-' * 21}:|{'-' * 10}:|{'-' * 11}:|")
        for name, ms, comp, diff in self.rows:
            ratio = f"{ms / base:.2f}x" if base else "-"
            c = f"{comp:.1f}" if comp is not None else "-"
            d = f"{diff:.1e}" if diff is not None else "-"
            print(f"| {name:<28} | {ms:>10.1f} | {ratio:>20} | {c:>9} | {d:>10} |")


def run_cases(cases: list[str], config: dict[str, Any], dtype: torch.dtype, dev: str, iters: int, warmup: int) -> Table:
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    ref = diffusers_unet(config, dev, dtype)
    args, kw = unet_inputs(config, dev, dtype)
    table = Table(
        f"UNet2DConditionModel forward, batch 2, {config['sample_size']}x{config['sample_size']} latents, "
        f"{str(dtype).removeprefix('torch.')}, {dev} ({torch.get_num_threads()} threads)"
    )

    def call(model: Any) -> Callable[[], Any]:
        return lambda: model(*args, **kw, return_dict=False)[0]

    with torch.no_grad():
        expected = call(ref)()
        table.add("diffusers eager", median_time(call(ref), iters, sync, warmup))
        if "eager" in cases:
            ours = ours_from(ref)
            table.add(
                "difflux eager", median_time(call(ours), iters, sync, warmup), diff=max_diff(call(ours)(), expected)
            )
            del ours
        for mode in ("default", "max"):
            if ("optimize" if mode == "default" else "optimize-max") not in cases:
                continue
            ours = ours_from(ref)
            print(ours.optimize(mode), flush=True)
            first = timed_first(call(ours), sync)
            diff = max_diff(call(ours)(), expected)
            table.add(f"difflux optimize({mode!r})", median_time(call(ours), iters, sync, warmup), first, diff)
            del ours
        if "max-no-compile" in cases:  # what the CPU gains without compiling (bf16 autocast, layout, fused QKV)
            ours = ours_from(ref)
            print(ours.optimize("max", skip=("regional_compile",)), flush=True)
            first = timed_first(call(ours), sync)
            diff = max_diff(call(ours)(), expected)
            table.add("difflux optimize('max'), no compile", median_time(call(ours), iters, sync, warmup), first, diff)
            del ours
        if "diffusers-compile" in cases:
            ref.to(memory_format=torch.channels_last)
            compiled = torch.compile(ref, fullgraph=True)
            first = timed_first(call(compiled), sync)
            diff = max_diff(call(compiled)(), expected)
            table.add("diffusers torch.compile", median_time(call(compiled), iters, sync, warmup), first, diff)
    return table


# -- the compile cache, across processes --------------------------------------------------------


def cache_worker(config_name: str, dtype_name: str, cache_dir: str) -> None:
    """One process: build, optimize(cache_dir=...), time the first forward; print JSON."""
    config = SD15 if config_name == "sd15" else TINY
    dtype = DTYPES[dtype_name]
    ref = diffusers_unet(config, "cpu", dtype)
    ours = ours_from(ref)
    args, kw = unet_inputs(config, "cpu", dtype)
    with torch.no_grad():
        t0 = time.perf_counter()
        ours.optimize(cache_dir=cache_dir)
        ours(*args, **kw)
        first = time.perf_counter() - t0
    print(json.dumps({"first_forward_s": first}), flush=True)


def run_cache(config_name: str, dtype_name: str) -> None:
    """Process A compiles and saves artefacts; B loads them; C compiles without them. Each has
    its own empty inductor cache, as a new machine or container would."""
    with tempfile.TemporaryDirectory(prefix="difflux-bench-cache-") as tmp:
        artefacts = Path(tmp) / "artefacts"
        results = {}
        for name, cache in (
            ("first process (compiles, saves)", artefacts),
            ("second process (loads)", artefacts),
            ("a process without the cache", Path(tmp) / "none"),
        ):
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(dir=tmp, prefix="inductor-")}
            out = subprocess.run(
                [sys.executable, __file__, "--_cache-worker", config_name, dtype_name, str(cache)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[name] = json.loads(out.strip().splitlines()[-1])["first_forward_s"]
        print(f"\ncompile cache ({config_name}, {dtype_name}): optimize() + first forward, fresh inductor cache each")
        for name, s in results.items():
            print(f"| {name:<34} | {s:>7.1f} s |")
        ratio = results["second process (loads)"] / results["a process without the cache"]
        print(f"second process / no cache: {ratio:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="eager,optimize", help=f"comma-separated, of: {', '.join(CASES)}")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--small", action="store_true", help="a tiny UNet (smoke check)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--_cache-worker", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._cache_worker:
        cache_worker(*args._cache_worker)
        return
    cases = [c.strip() for c in args.case.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    config = TINY if args.small else SD15
    if set(cases) - {"cache"}:
        run_cases(cases, config, DTYPES[args.dtype], "cpu", args.iters, args.warmup).print()
    if "cache" in cases:
        run_cache("tiny" if args.small else "sd15", args.dtype)


if __name__ == "__main__":
    main()
