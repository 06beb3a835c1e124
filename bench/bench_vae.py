"""Benchmark difflux's AutoencoderKL against diffusers' on the CPU (fp32).

Both libraries build the SD1.5-size VAE (random weights from diffusers, copied into difflux: the
parameter names match) in one process and run decode (latent ``1x4xHxW``) and encode (image
``1x3x8Hx8W``) on the same inputs, back to back, ``--rounds`` times, alternating which library
goes first. Printed per direction: both medians and minima, the median of the per-round ratios
(difflux / diffusers; below 1.0 means difflux is faster) and the largest absolute difference of
the outputs. Also printed: the median minor page faults per call (each fresh 4 KiB page of a
large tensor costs one: glibc returns allocations above 32 MiB to the kernel when freed, so every
big activation is faulted in again, about a third of the decode time on a 2-core machine; run with
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184`` to see the time without
that cost, for both libraries). The load average is printed before and after, since a loaded
machine skews both sides.

Usage::

    python bench/bench_vae.py                      # 512x512 (latent 64x64), 5 rounds
    python bench/bench_vae.py --latent 32 --rounds 7
    python bench/bench_vae.py --parts decode --threads 2
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

#: The published SD1.5 VAE config (diffusers' defaults plus these).
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
}


def uptime() -> str:
    try:
        with open("/proc/loadavg") as f:
            return "load average " + " ".join(f.read().split()[:3])
    except OSError:
        return "load average unknown"


def build() -> tuple[Any, Any]:
    """(difflux, diffusers) VAEs in eval mode with the same random weights."""
    from difflux_models import AutoencoderKL
    from diffusers import AutoencoderKL as DiffusersVAE

    torch.manual_seed(0)
    theirs: Any = DiffusersVAE(**SD15_VAE)
    ours: Any = AutoencoderKL(**SD15_VAE)
    theirs.eval()
    ours.eval()
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing and not unexpected
    return ours, theirs


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn: Callable[[], torch.Tensor], faults: list[int]) -> tuple[float, torch.Tensor]:
    f0 = minor_faults()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    faults.append(minor_faults() - f0)
    return elapsed, out


def compare(name: str, ours: Callable[[], torch.Tensor], theirs: Callable[[], torch.Tensor], rounds: int) -> None:
    with torch.inference_mode():
        ours(), theirs()  # warm-up (allocator, oneDNN primitives)
        t_ours: list[float] = []
        t_theirs: list[float] = []
        f_ours: list[int] = []
        f_theirs: list[int] = []
        diff = 0.0
        for r in range(rounds):
            if r % 2 == 0:
                a, out_a = timed(ours, f_ours)
                b, out_b = timed(theirs, f_theirs)
            else:
                b, out_b = timed(theirs, f_theirs)
                a, out_a = timed(ours, f_ours)
            t_ours.append(a)
            t_theirs.append(b)
            diff = max(diff, (out_a - out_b).abs().max().item())
            print(f"  {name} round {r}: difflux {a:7.3f} s  diffusers {b:7.3f} s  ratio {a / b:5.3f}", flush=True)
    ratios = [a / b for a, b in zip(t_ours, t_theirs, strict=True)]
    print(
        f"{name}: difflux median {statistics.median(t_ours):.3f} s (min {min(t_ours):.3f}), "
        f"diffusers median {statistics.median(t_theirs):.3f} s (min {min(t_theirs):.3f}), "
        f"ratio median {statistics.median(ratios):.3f} (of minima {min(t_ours) / min(t_theirs):.3f}), "
        f"max |diff| {diff:.3g}",
        flush=True,
    )
    print(
        f"{name}: minor page faults per call: difflux {statistics.median(f_ours):.0f}, "
        f"diffusers {statistics.median(f_theirs):.0f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 -> 512x512 images)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--parts", nargs="+", choices=("decode", "encode"), default=["decode", "encode"])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; {uptime()}", flush=True)
    ours, theirs = build()
    g = torch.Generator().manual_seed(1)
    side = args.latent
    if "decode" in args.parts:
        z = torch.randn(1, 4, side, side, generator=g)
        compare(
            f"decode 1x4x{side}x{side}",
            lambda: ours.decode(z).sample,
            lambda: theirs.decode(z).sample,
            args.rounds,
        )
    if "encode" in args.parts:
        x = torch.rand(1, 3, 8 * side, 8 * side, generator=g) * 2 - 1
        compare(
            f"encode 1x3x{8 * side}x{8 * side}",
            lambda: ours.encode(x).latent_dist.mean,
            lambda: theirs.encode(x).latent_dist.mean,
            args.rounds,
        )
    print(f"done; {uptime()}", flush=True)


if __name__ == "__main__":
    main()
