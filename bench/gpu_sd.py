"""SD1.5-size and SDXL-size random weights at fp16, 30 steps, difflux against Diffusers on the same card.

``--tiny --device cpu`` is a smoke mode (tiny pipeline, fp32, 2 steps) that checks the script runs
where there is no GPU. Prints one line per case with both timings and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sd import load_both, save_pipeline, time_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="smoke mode: tiny pipeline, fp32, 2 steps")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="sd15,sdxl")
    args = parser.parse_args()
    cases = ["tiny"] if args.tiny else args.cases.split(",")
    dtype = torch.float32 if args.tiny or args.device == "cpu" else torch.float16
    steps = 2 if args.tiny else args.steps
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    with tempfile.TemporaryDirectory(prefix="difflux-gpu-sd-") as tmp:
        for case in cases:
            ours, theirs = load_both(save_pipeline(case, Path(tmp)), args.device, dtype)
            px = {"tiny": 32, "sd15": 512, "sdxl": 1024}[case]
            kw = {
                "prompt": "a photo of a cat",
                "num_inference_steps": steps,
                "height": px,
                "width": px,
                "output_type": "np",
            }
            a = time_call(ours, args.repeat, sync, **kw)
            b = time_call(theirs, args.repeat, sync, **kw)
            print(
                f"{case}: {steps} steps {px}x{px} {dtype} {args.device}  difflux {a:.3f}s  diffusers {b:.3f}s  "
                f"ratio {a / b:.2f}"
            )
            del ours, theirs
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
