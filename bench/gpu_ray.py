"""``difflux batch`` on a GPU: images/s of an SD1.5-size pipeline (random weights, fp16, 512x512, 20 steps).

The batch runs through :func:`difflux_ray.batch.run_batch`: with the local engine (one process,
no Ray needed) and, when ``ray`` is importable, with the Ray engine and one actor per GPU. The
same jobs through Diffusers in one process are the reference (ratio difflux / diffusers, time per
image). ``--tiny --device cpu`` is the smoke mode (tiny pipeline, fp32, 2 steps, 32x32).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sd import save_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="smoke mode: tiny pipeline, fp32, 2 steps, 32x32")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    case = "tiny" if args.tiny else "sd15"
    px = 32 if args.tiny else 512
    steps = 2 if args.tiny else args.steps
    dtype = "float32" if args.tiny or args.device == "cpu" else "float16"
    from difflux_ray.batch import run_batch
    from difflux_ray.runner import RunnerConfig

    def loader(config: RunnerConfig) -> Any:
        import difflux

        pipe = difflux.DiffusionPipeline.from_pretrained(config.model, torch_dtype=getattr(torch, dtype))
        return pipe.to(args.device)

    with tempfile.TemporaryDirectory(prefix="difflux-gpu-ray-") as tmp:
        folder = save_pipeline(case, Path(tmp))
        jobs = Path(tmp) / "jobs.jsonl"
        jobs.write_text(
            "".join(
                json.dumps({"prompt": f"a photo of a cat, {i}", "steps": steps, "height": px, "width": px}) + "\n"
                for i in range(args.jobs)
            )
        )
        rows: dict[str, tuple[float, float]] = {}

        def timed(name: str, **options: Any) -> None:
            stamps: list[float] = []
            start = time.perf_counter()
            run_batch(jobs, Path(tmp) / name, model=str(folder), loader=loader, progress=False,
                      on_record=lambda r: stamps.append(time.perf_counter()), **options)  # fmt: skip
            total = time.perf_counter() - start
            steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
            rows[name] = (args.jobs / total, steady)

        timed("local", engine="local")
        try:
            import ray
        except ImportError:
            print("ray is not installed: the Ray engine is left out")
        else:
            ray.init(include_dashboard=False)
            gpus = int(ray.cluster_resources().get("GPU", 0))
            timed(f"ray-{max(gpus, 1)}-actor", engine="ray", gpus_per_actor=1.0 if gpus else 0.0)
            ray.shutdown()
        import diffusers

        ref = diffusers.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=getattr(torch, dtype)).to(
            args.device
        )
        ref.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        for i in range(args.jobs):
            ref(f"a photo of a cat, {i}", num_inference_steps=steps, height=px, width=px,
                generator=torch.Generator().manual_seed(i))  # fmt: skip
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        theirs = args.jobs / (time.perf_counter() - start)
        print(f"{case}: {args.jobs} jobs, {steps} steps, {px}x{px}, {dtype}, {args.device}")
        for name, (overall, steady) in rows.items():
            print(f"  difflux batch {name:12s} {overall:7.2f} img/s overall  {steady:7.2f} img/s steady")
        print(f"  diffusers, one process   {theirs:7.2f} img/s (model loaded)")
        print(f"  ratio difflux local steady / diffusers: {rows['local'][1] / theirs:.2f} (above 1: difflux faster)")


if __name__ == "__main__":
    main()
