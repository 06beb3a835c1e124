"""GPU benchmark: attention backends and slicing on an SD1.5 UNet step, difflux vs Diffusers.

An SD1.5-size ``UNet2DConditionModel`` (random weights, seed 0) is built with Diffusers and its
state dict loaded into difflux's (same keys), both fp16 on the device; one step is a batch-2,
64x64-latent forward with 77 text tokens. For each mode the step time (median of ``--iters``
after ``--warmup``, CUDA-synchronised) and the peak GPU memory of the timed steps
(``torch.cuda.max_memory_allocated`` after a reset) are measured, and the output is compared with
Diffusers' plain step. One JSON line per measurement, then a summary with ratios.

difflux modes: every registered attention backend (``sdpa``, ``sdpa-flash``, ``sdpa-efficient``,
``sdpa-cudnn``, ``sdpa-math``, ``flex``, ``xformers``, ``flash``, ``sage``, ``reference``) chosen
with ``set_attention_backend``, plus ``enable_attention_slicing("auto")`` / ``("max")``; a backend
that is unavailable or refuses the UNet's inputs (SD1.5 head dims are 40, 80 and 160) is reported
with the reason instead of a time. Diffusers modes: plain (SDPA), ``set_attention_slice("auto")`` /
``("max")`` and ``enable_xformers_memory_efficient_attention()`` where xFormers is installed.

Usage::

    python bench/gpu_attention.py                      # SD1.5, fp16, on cuda
    python bench/gpu_attention.py --iters 20
    python bench/gpu_attention.py --tiny --device cpu  # smoke check of the code path (fp32)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from gpu_models import SD15, TINY  # the model GPU bench's configs (bench/ is on sys.path as a script)

BACKENDS = (
    "sdpa",
    "sdpa-flash",
    "sdpa-efficient",
    "sdpa-cudnn",
    "sdpa-math",
    "flex",
    "xformers",
    "flash",
    "sage",
    "reference",
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    step: Callable[[], torch.Tensor], device: torch.device, iters: int, warmup: int
) -> tuple[float, int | None, torch.Tensor]:
    """Median seconds per step, peak bytes allocated during the timed steps (CUDA only), last output."""
    out = step()
    for _ in range(max(0, warmup - 1)):
        out = step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        out = step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return statistics.median(times), peak, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny UNet (smoke check)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", default=None, help="float16 (default on cuda) or float32 (default on cpu)")
    args = parser.parse_args()

    import diffusers
    from difflux.attention import AttentionBackendError
    from difflux.registry import get_registry
    from difflux_models.unet_2d_condition import UNet2DConditionModel

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    config = TINY if args.tiny else SD15
    torch.manual_seed(0)
    ref: Any = diffusers.UNet2DConditionModel(**config).eval()
    ours = UNet2DConditionModel(**config).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not missing and not unexpected
    ref.to(device, dtype)
    ours.to(device, dtype)
    g = torch.Generator().manual_seed(0)
    size = config["sample_size"]
    x = torch.randn(2, 4, size, size, generator=g).to(device, dtype)
    ctx = torch.randn(2, 77, config["cross_attention_dim"], generator=g).to(device, dtype)
    t = torch.tensor([999, 999], device=device)
    results: dict[str, dict[str, Any]] = {}

    def record(name: str, step: Callable[[], torch.Tensor], base: torch.Tensor | None) -> torch.Tensor | None:
        try:
            seconds, peak, out = measure(step, device, args.iters, args.warmup)
        except (AttentionBackendError, RuntimeError, NotImplementedError, ValueError) as exc:
            row = {"mode": name, "error": " ".join(f"{type(exc).__name__}: {exc}".split())[:400]}
            results[name] = row
            print(json.dumps(row), flush=True)
            return None
        row = {
            "mode": name,
            "step_ms": round(seconds * 1e3, 3),
            "peak_mib": round(peak / 2**20, 1) if peak is not None else None,
            "max_abs_diff_vs_diffusers": round(float((out.float() - base.float()).abs().max()), 6)
            if base is not None
            else 0.0,
        }
        results[name] = row
        print(json.dumps(row), flush=True)
        return out

    with torch.inference_mode():
        base = record("diffusers:plain", lambda: ref(x, t, ctx).sample, None)
        assert base is not None, "diffusers' plain step failed"
        for size_name in ("auto", "max"):
            ref.set_attention_slice(size_name)
            record(f"diffusers:sliced-{size_name}", lambda: ref(x, t, ctx).sample, base)
        ref.set_attn_processor(diffusers.models.attention_processor.AttnProcessor2_0())
        try:
            ref.enable_xformers_memory_efficient_attention()
        except (ModuleNotFoundError, ValueError, ImportError) as exc:
            results["diffusers:xformers"] = {"mode": "diffusers:xformers", "error": str(exc)[:300]}
            print(json.dumps(results["diffusers:xformers"]), flush=True)
        else:
            record("diffusers:xformers", lambda: ref(x, t, ctx).sample, base)
            ref.disable_xformers_memory_efficient_attention()

        specs = get_registry().attention_backends
        for name in BACKENDS:
            spec = specs.get(name)
            why = "not installed" if spec is None else spec.available()
            if why is not None:
                results[f"difflux:{name}"] = {"mode": f"difflux:{name}", "unavailable": why}
                print(json.dumps(results[f"difflux:{name}"]), flush=True)
                continue
            ours.set_attention_backend(name)
            record(f"difflux:{name}", lambda: ours(x, t, ctx).sample, base)
        ours.set_attention_backend(None)
        for size_name in ("auto", "max"):
            ours.enable_attention_slicing(size_name)
            record(f"difflux:sliced-{size_name}", lambda: ours(x, t, ctx).sample, base)
        ours.disable_attention_slicing()

    def ratio(a: str, b: str, key: str) -> float | None:
        ra, rb = results.get(a, {}), results.get(b, {})
        return round(ra[key] / rb[key], 3) if ra.get(key) and rb.get(key) else None

    pairs = {
        "sdpa/plain": ("difflux:sdpa", "diffusers:plain"),
        "sliced-auto": ("difflux:sliced-auto", "diffusers:sliced-auto"),
        "sliced-max": ("difflux:sliced-max", "diffusers:sliced-max"),
        "xformers": ("difflux:xformers", "diffusers:xformers"),
    }
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "config": "tiny" if args.tiny else "sd1.5",
        "dtype": str(dtype),
        "torch": torch.__version__,
        "difflux_over_diffusers": {
            k: {"step": ratio(a, b, "step_ms"), "peak": ratio(a, b, "peak_mib")} for k, (a, b) in pairs.items()
        },
        "difflux_backend_over_sdpa_step": {
            name.removeprefix("difflux:"): ratio(name, "difflux:sdpa", "step_ms")
            for name in results
            if name.startswith("difflux:") and "step_ms" in results[name]
        },
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
