"""GPU benchmark of the fast path (``optimize()``), fp16, batch 2, one prepared script (about 4 minutes on an H200).

Per UNet (SD1.5 at 64x64 latents, SDXL at 128x128), on the same weights and inputs, one table:
Diffusers eager, Diffusers ``torch.compile`` (``channels_last``, ``fullgraph=True``; SD1.5 only
unless ``--diffusers-compile-sdxl``: it took 306 s in ``/work/shared/anchors``), difflux eager,
difflux ``optimize()`` and ``optimize("max")`` (CUDA graphs): ms per step (median of ``--iters``
after warm-up), ratio to Diffusers eager, compile time (first call), max |diff| to Diffusers eager.
Then the top CUDA kernels of one optimized step (``torch.profiler``), the cost of the scheduler
step plus guidance that stays outside the CUDA graph, and full 30-step pipelines (512 px SD1.5,
1024 px SDXL; difflux eager and ``optimize("max")`` of the UNet against Diffusers eager).

Usage::

    python bench/gpu_optimize.py                      # everything
    python bench/gpu_optimize.py --models sd15 --no-pipelines
    python bench/gpu_optimize.py --tiny --device cpu  # smoke check of the code path (fp32, tiny models)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_optimize import Table, diffusers_unet, max_diff, ours_from, timed_first
from gpu_models import SD15, SDXL, TINY, TINY_XL, median_time, unet_inputs

START = time.perf_counter()


def elapsed() -> str:
    return f"[{time.perf_counter() - START:5.0f} s]"


def time_left(args: argparse.Namespace, need: float, what: str) -> bool:
    """Whether ``need`` seconds fit in ``--budget``; prints the skip when they do not."""
    left = args.budget - (time.perf_counter() - START)
    if left < need:
        print(f"skipped {what}: {left:.0f} s of the {args.budget:.0f} s budget left, it needs about {need:.0f} s")
    return left >= need


def bench_unet(name: str, config: dict[str, Any], args: argparse.Namespace, dev: str, dtype: torch.dtype) -> None:
    """The table (and kernel profile) for one UNet."""
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    ref = diffusers_unet(config, dev, dtype)
    call_args, kw = unet_inputs(config, dev, dtype)
    s = config["sample_size"]
    table = Table(f"{name} UNet step, batch 2, {s}x{s} latents, {str(dtype).removeprefix('torch.')}, {dev}", "ms/step")

    def call(model: Any) -> Callable[[], Any]:
        return lambda: model(*call_args, **kw, return_dict=False)[0]

    with torch.no_grad():
        expected = call(ref)().clone()
        table.add("diffusers eager", median_time(call(ref), args.iters, sync))
        ours = ours_from(ref)
        table.add("difflux eager", median_time(call(ours), args.iters, sync), diff=max_diff(call(ours)(), expected))
        print(elapsed(), "eager done", flush=True)

        ours.optimize(compile_backend=args.compile_backend)
        first = timed_first(call(ours), sync)
        table.add(
            "difflux optimize()", median_time(call(ours), args.iters, sync), first, max_diff(call(ours)(), expected)
        )
        print(elapsed(), "optimize() done", flush=True)
        profile_model = ours

        fast = ours_from(ref)  # a second copy: its blocks reuse the graphs compiled above
        print(fast.optimize("max", compile_backend=args.compile_backend), flush=True)
        first = timed_first(call(fast), sync)
        for _ in range(3):  # warm-up calls, then the capture
            call(fast)()
        table.add(
            'difflux optimize("max")',
            median_time(call(fast), args.iters, sync),
            first,
            max_diff(call(fast)(), expected),
        )
        print(elapsed(), 'optimize("max") done', flush=True)

        if (
            dev == "cuda"
            and (name != "SDXL" or args.diffusers_compile_sdxl)
            and not args.no_diffusers_compile
            and time_left(args, 80 if name != "SDXL" else 320, f"{name} diffusers torch.compile")
        ):
            ref.to(memory_format=torch.channels_last)
            compiled = torch.compile(ref, fullgraph=True)
            first = timed_first(call(compiled), sync)
            table.add(
                "diffusers torch.compile",
                median_time(call(compiled), args.iters, sync),
                first,
                max_diff(call(compiled)(), expected),
            )
            del compiled
            print(elapsed(), "diffusers compile done", flush=True)
    table.print()
    if args.profile:
        top_kernels(f"{name} optimize()", call(profile_model), dev)
    del ref, ours, fast


def top_kernels(title: str, fn: Callable[[], Any], dev: str, rows: int = 12) -> None:
    """The kernels that take the most device time over 5 calls of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if dev == "cuda" else [ProfilerActivity.CPU]
    with torch.no_grad(), profile(activities=activities) as prof:
        for _ in range(5):
            fn()
        if dev == "cuda":
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if getattr(e, "device_time_total", 0) > 0 or dev != "cuda"]
    key = (lambda e: e.device_time_total) if dev == "cuda" else (lambda e: e.self_cpu_time_total)
    events.sort(key=key, reverse=True)
    total = sum(key(e) for e in events) or 1.0
    print(f"\ntop kernels, {title} (5 steps; % of {'device' if dev == 'cuda' else 'CPU self'} time)")
    print("| kernel | calls/step | ms/step | % |")
    print("|---|---:|---:|---:|")
    for e in events[:rows]:
        name = e.key if len(e.key) <= 70 else e.key[:67] + "..."
        print(f"| `{name}` | {e.count / 5:.0f} | {key(e) / 5e3:.3f} | {100 * key(e) / total:.1f} |")


def scheduler_step_cost(config: dict[str, Any], dev: str, dtype: torch.dtype, iters: int) -> None:
    """Guidance plus an Euler step on one latent: what stays outside the CUDA graph."""
    from difflux_schedulers import EulerDiscreteScheduler

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    sched.set_timesteps(30, device=dev)
    s = config["sample_size"]
    latents = torch.randn(1, 4, s, s, device=dev, dtype=dtype)
    noise = torch.randn(2, 4, s, s, device=dev, dtype=dtype)
    t = sched.timesteps[0]

    def step() -> Any:
        sched._step_index = 0  # the first step, every time
        uncond, text = noise.chunk(2)
        guided = uncond + 7.5 * (text - uncond)
        return sched.step(guided, t, latents, return_dict=False)[0]

    ms = median_time(step, iters, sync) * 1e3
    print(f"\nguidance + scheduler step outside the graph ({s}x{s} latent): {ms:.3f} ms/step")


def bench_pipeline(size: str, dev: str, dtype: torch.dtype, steps: int, compile_backend: str) -> None:
    """A full text-to-image call: Diffusers eager, difflux eager, difflux with ``optimize("max")`` of
    the UNet (its blocks reuse the graphs the UNet table compiled: same shapes)."""
    import diffusers
    from bench_sd import sd_components

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="difflux-gpu-opt-") as tmp, torch.device(dev):
        parts = sd_components(size, Path(tmp))
    name = "StableDiffusionXLPipeline" if size == "sdxl" else "StableDiffusionPipeline"
    extra = {} if size == "sdxl" else {"requires_safety_checker": False}
    theirs = getattr(diffusers, name)(**parts, **extra).to(dev, dtype)
    ours = difflux_pipeline(theirs, size, extra)
    px = {"tiny": 32, "sd15": 512, "sdxl": 1024}[size]
    kw = {"prompt": "a photo of a cat", "num_inference_steps": steps, "height": px, "width": px, "output_type": "np"}

    def run(pipe: Any) -> float:
        pipe.set_progress_bar_config(disable=True)
        with torch.no_grad():
            pipe(**kw)  # warm-up (and CUDA graph capture)
            pipe(**kw)
            sync()
            t0 = time.perf_counter()
            pipe(**kw)
            sync()
        return time.perf_counter() - t0

    table = Table(f"{size} pipeline, {steps} steps, {px}x{px}, {str(dtype).removeprefix('torch.')}, {dev}", "ms/image")
    table.add("diffusers eager", run(theirs))
    table.add("difflux eager", run(ours))
    ours.optimize("max", components=["unet"], compile_backend=compile_backend)
    table.add('difflux optimize("max") unet', run(ours))
    table.print()


def difflux_pipeline(theirs: Any, size: str, extra: dict[str, Any]) -> Any:
    """The difflux pipeline over the same weights (models rebuilt from the state dicts, text encoders shared)."""
    import difflux_schedulers
    import difflux_stable_diffusion
    from difflux_models import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**{k: v for k, v in dict(theirs.vae.config).items() if not k.startswith("_")})
    vae.load_state_dict(theirs.vae.state_dict(), assign=True)
    scheduler_cls = getattr(difflux_schedulers, type(theirs.scheduler).__name__)
    parts = {
        "vae": vae.eval(),
        "unet": ours_from(theirs.unet),
        "scheduler": scheduler_cls.from_config(dict(theirs.scheduler.config)),
        "text_encoder": theirs.text_encoder,
        "tokenizer": theirs.tokenizer,
    }
    if size == "sdxl":
        parts |= {"text_encoder_2": theirs.text_encoder_2, "tokenizer_2": theirs.tokenizer_2}
        return difflux_stable_diffusion.StableDiffusionXLPipeline(**parts)
    return difflux_stable_diffusion.StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, **extra
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="smoke mode: tiny models, fp32, 2 steps")
    ap.add_argument("--models", default="sd15,sdxl")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--budget", type=float, default=280, help="seconds; later cases that would not fit are skipped")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--no-pipelines", action="store_true")
    ap.add_argument("--no-unets", action="store_true", help="only the pipelines")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--no-diffusers-compile", action="store_true")
    ap.add_argument("--compile-backend", default="inductor", help="'eager' for a fast smoke check")
    ap.add_argument("--diffusers-compile-sdxl", action="store_true", help="compile Diffusers' SDXL UNet too (minutes)")
    args = ap.parse_args()
    dev = args.device
    dtype = torch.float32 if args.tiny or dev == "cpu" else torch.float16
    if args.tiny:
        args.iters, args.steps, args.budget = min(args.iters, 3), 2, float("inf")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if dev == 'cuda' else 'cpu'}", flush=True)
    for name in [] if args.no_unets else args.models.split(","):
        config = {"sd15": TINY if args.tiny else SD15, "sdxl": TINY_XL if args.tiny else SDXL}[name]
        if name == "sdxl" and not time_left(args, 80, "the SDXL UNet table"):
            continue
        bench_unet(name.upper().replace("SD15", "SD1.5"), config, args, dev, dtype)
        scheduler_step_cost(config, dev, dtype, args.iters)
        print(elapsed(), flush=True)
        if dev == "cuda":
            torch.cuda.empty_cache()
    if not args.no_pipelines:
        for name in args.models.split(","):
            if time_left(args, 25 if name == "sd15" else 45, f"the {name} pipeline"):
                bench_pipeline("tiny" if args.tiny else name, dev, dtype, args.steps, args.compile_backend)
            print(elapsed(), flush=True)
            if dev == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
