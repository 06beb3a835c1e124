"""Time one ``step()`` of every difflux scheduler against its Diffusers counterpart.

For each scheduler registered by the ``difflux-schedulers`` plugin: ``set_timesteps(50)``, run the
steps before the middle of the schedule (so multistep state is warm), then time the middle step
on a 2x4x64x64 fp32 latent, many times, each on a fresh copy of the warm state (the copy is not
timed). Prints the median time per library and the ratio difflux / diffusers (goal: <= 1.0).

    python bench/bench_schedulers.py --repeat 200 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

SHAPE = (2, 4, 64, 64)
NUM_INFERENCE_STEPS = 50
#: config overrides (same for both libraries) where the default cannot take a 50-step schedule
CONFIGS: dict[str, dict[str, Any]] = {"CMStochasticIterativeScheduler": {"num_train_timesteps": 151}}


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _prepare(scheduler: Any, model_output: torch.Tensor, sample: torch.Tensor) -> Callable[[Any], Any]:
    """Warm ``scheduler`` up to the middle of a 50-step schedule; return a function that takes one step on a
    scheduler copy in that state."""
    name = type(scheduler).__name__
    scheduler.set_timesteps(NUM_INFERENCE_STEPS)
    if name == "ScoreSdeVeScheduler":
        scheduler.set_sigmas(NUM_INFERENCE_STEPS)
        t = scheduler.timesteps[NUM_INFERENCE_STEPS // 2]
        return lambda s: s.step_pred(model_output, t, sample, generator=torch.Generator().manual_seed(0))
    if name == "KarrasVeScheduler":
        t = int(scheduler.timesteps[NUM_INFERENCE_STEPS // 2])
        sigma_hat, sigma_prev = scheduler.schedule[t], scheduler.schedule[t - 1]
        return lambda s: s.step(model_output, sigma_hat, sigma_prev, sample)
    timesteps = scheduler.timesteps
    mid = len(timesteps) // 2
    kwargs = {}
    if _accepts(scheduler.step, "generator"):
        kwargs["generator"] = torch.Generator().manual_seed(0)
    x = sample
    for t in timesteps[:mid]:
        if hasattr(scheduler, "scale_model_input"):
            scheduler.scale_model_input(x, t)
        x = scheduler.step(model_output, t, x, **kwargs).prev_sample
    t_mid = timesteps[mid]

    def one_step(s: Any) -> Any:
        if hasattr(s, "scale_model_input"):
            s.scale_model_input(sample, t_mid)  # sets the step index where needed; not timed separately
        gen = {"generator": torch.Generator().manual_seed(0)} if kwargs else {}
        return s.step(model_output, t_mid, sample, **gen)

    return one_step


def _time_step(scheduler: Any, repeat: int, model_output: torch.Tensor, sample: torch.Tensor) -> float:
    """Median seconds of the middle ``step`` (scale_model_input and the state copies are not timed).

    The warm-state copies are made in batches before timing: a deep copy made right before a step
    evicts CPU caches and penalises schedulers by the number of objects they hold, not by their step.
    """
    step = _prepare(scheduler, model_output, sample)
    times: list[float] = []
    batch = 50
    while len(times) < repeat + 5:
        copies = [copy.deepcopy(scheduler) for _ in range(batch)]
        for s in copies:
            timed = _Timed(step)
            timed(s)
            times.append(timed.elapsed)
    return statistics.median(times[5 : repeat + 5])


class _Timed:
    """Runs ``fn`` once, timing only the ``step`` call inside it."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.elapsed = 0.0

    def __call__(self, scheduler: Any) -> None:
        original = scheduler.step_pred if type(scheduler).__name__ == "ScoreSdeVeScheduler" else scheduler.step
        attr = "step_pred" if type(scheduler).__name__ == "ScoreSdeVeScheduler" else "step"

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = original(*args, **kwargs)
            self.elapsed = time.perf_counter() - start
            return out

        setattr(scheduler, attr, timed)
        self.fn(scheduler)


def _load_difflux_classes() -> tuple[list[tuple[str, type]], list[str]]:
    from difflux_schedulers.plugin import SCHEDULERS

    found, notes = [], []
    for ref in SCHEDULERS:
        module, _, name = ref.partition(":")
        try:
            found.append((name, getattr(importlib.import_module(module), name)))
        except Exception as exc:  # a scheduler still in progress: skip it with a note
            notes.append(f"{name}: skipped ({type(exc).__name__}: {exc})")
    return found, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="timed steps per scheduler and library")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1 gives stable numbers)")
    parser.add_argument("--only", nargs="*", help="scheduler class names to bench (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(SHAPE, generator=gen)
    model_output = torch.randn(SHAPE, generator=gen) * 0.5

    classes, notes = _load_difflux_classes()
    rows = []
    for name, cls in classes:
        if args.only and name not in args.only:
            continue
        try:
            ref_cls = getattr(diffusers, name)
            config = CONFIGS.get(name, {})
            ours = _time_step(cls(**config), args.repeat, model_output, sample)
            theirs = _time_step(ref_cls(**config), args.repeat, model_output, sample)
        except Exception as exc:
            notes.append(f"{name}: failed ({type(exc).__name__}: {exc})")
            continue
        rows.append((name, ours, theirs))

    print(
        f"one step() on {'x'.join(map(str, SHAPE))} fp32, 50-step schedule, middle step, "
        f"median of {args.repeat}, {args.threads} thread(s), torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}"
    )
    print(f"{'scheduler':<36} {'difflux us':>11} {'diffusers us':>13} {'ratio':>7}")
    for name, ours, theirs in rows:
        flag = "" if ours <= theirs else "  > 1"
        print(f"{name:<36} {ours * 1e6:>11.1f} {theirs * 1e6:>13.1f} {ours / theirs:>7.2f}{flag}")
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    main()
