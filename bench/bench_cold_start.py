"""Cold start: a fresh interpreter imports difflux and loads every installed plugin, against
``import diffusers; diffusers.DiffusionPipeline`` in the same run.

Goal: difflux / diffusers <= 0.35. Prints one line per command and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

DIFFLUX = (
    "import difflux; r = difflux.get_registry(); "
    "assert len(r.plugins) > 1, r.plugins; print(len(r.plugins), 'plugins', sorted(r.plugins))"
)
DIFFUSERS = "import diffusers; diffusers.DiffusionPipeline"


def time_command(code: str, repeat: int) -> tuple[float, str]:
    times, out = [], ""
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
        out = proc.stdout.strip()
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    # One untimed run each, so both read their files from a warm page cache.
    time_command(DIFFLUX, 1)
    time_command(DIFFUSERS, 1)
    ours, loaded = time_command(DIFFLUX, args.repeat)
    theirs, _ = time_command(DIFFUSERS, args.repeat)
    print(f"difflux   import + load plugins: {ours:.3f} s  ({loaded})")
    print(f"diffusers import + DiffusionPipeline: {theirs:.3f} s")
    print(f"ratio difflux/diffusers: {ours / theirs:.3f}  (goal <= 0.35)")


if __name__ == "__main__":
    main()
