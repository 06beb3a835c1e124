"""Per-step overhead of pipeline + scheduler around a tiny model: difflux vs Diffusers, same run.

Diffusers builds a seeded tiny ``UNet2DModel`` and each pipeline is saved; difflux loads the same
folder, so weights and scheduler config are identical. Each pipeline runs ``--steps`` denoising
steps on the CPU (batch 1, fp32, no progress bar, ``output_type="np"``). Forward hooks on the UNet
time the model inside the very same run, and that time is taken off: what remains is what the
pipeline and the scheduler cost per step. Runs are interleaved round by round and the fastest
round counts, which keeps the figures steady on a busy machine. Prints both libraries' overhead
per step and the ratio difflux / Diffusers (goal: <= 0.8).

Two ways of running the model:

- ``shared model``: both pipelines call the *same* Diffusers UNet object;
- ``own model``: each pipeline calls its own library's UNet (loaded from the same folder).

    python bench/bench_pipelines.py --repeat 20 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

PIPELINES = {"DDPMPipeline": "DDPMScheduler", "DDIMPipeline": "DDIMScheduler", "PNDMPipeline": "PNDMScheduler"}


def tiny_unet() -> Any:
    import diffusers

    torch.manual_seed(0)
    unet: Any = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    return unet.eval()


class ModelClock:
    """Accumulates the wall time spent inside a module's ``forward`` (via forward hooks)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.total = 0.0
        self._start = 0.0
        module.register_forward_pre_hook(self._enter)
        module.register_forward_hook(self._leave)

    def _enter(self, *_: Any) -> None:
        self._start = time.perf_counter()

    def _leave(self, *_: Any) -> None:
        self.total += time.perf_counter() - self._start


def overhead_run(pipe: Any, clock: ModelClock, steps: int) -> Callable[[], float]:
    """A run of ``pipe`` that returns its wall time minus the time spent in the model."""
    pipe.set_progress_bar_config(disable=True)

    def run() -> float:
        clock.total = 0.0
        start = time.perf_counter()
        pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=steps, output_type="np")
        return time.perf_counter() - start - clock.total

    return run


def best_overheads(runs: dict[str, Callable[[], float]], repeat: int) -> dict[str, float]:
    """The smallest of ``repeat`` overheads of each run, the runs interleaved round by round."""
    for run in runs.values():
        run()  # warm-up
    found: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            found[name].append(run())
    return {name: min(values) for name, values in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    import diffusers
    from difflux import DiffusionPipeline

    unet = tiny_unet()
    shared_clock = ModelClock(unet)
    print(f"CPU, {args.threads} thread(s), {args.steps} steps, batch 1, best of {args.repeat} interleaved runs")
    print("pipeline + scheduler time per step, model time excluded (microseconds)")
    print(f"{'pipeline':<14} {'model':<8} {'diffusers':>10} {'difflux':>10} {'ratio':>7}")
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, scheduler in PIPELINES.items():
            reference = getattr(diffusers, name)(unet=unet, scheduler=getattr(diffusers, scheduler)())
            folder = Path(tmp) / name
            reference.save_pretrained(folder)
            ours: Any = DiffusionPipeline.from_pretrained(folder)
            assert type(ours).__name__ == name
            own_clock = ModelClock(ours.unet)
            shared = type(ours)(unet=unet, scheduler=type(ours.scheduler).from_config(ours.scheduler.config))
            best = best_overheads(
                {
                    "diffusers": overhead_run(reference, shared_clock, args.steps),
                    "shared": overhead_run(shared, shared_clock, args.steps),
                    "own": overhead_run(ours, own_clock, args.steps),
                },
                args.repeat,
            )
            per_step = 1e6 / args.steps
            for label in ("shared", "own"):
                ratio = best[label] / best["diffusers"]
                ratios.append(ratio)
                print(
                    f"{name:<14} {label:<8} {best['diffusers'] * per_step:>10.1f} "
                    f"{best[label] * per_step:>10.1f} {ratio:>6.2f}x"
                )
    print(f"worst ratio {max(ratios):.2f}x (goal <= 0.8x)")


if __name__ == "__main__":
    main()
