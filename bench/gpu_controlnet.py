"""ControlNet on a GPU at fp16, difflux against Diffusers on the same card, same weights, same inputs.

Two cases, one line each with both timings and the ratio difflux/diffusers:

- ``pipeline``: an SD 1.5-size ``StableDiffusionControlNetPipeline`` (random weights: the published
  UNet, VAE, CLIP-L and ControlNet configs) at 512x512, ``--steps`` steps with guidance, end to end.
- ``step``: one ControlNet-guided UNet call (ControlNet, then the UNet with its residuals) on
  batch 2 at 64x64 latents (the goal is <= 1.0).

``--tiny --device cpu`` is the smoke mode (tiny models, fp32, 2 steps) that checks the script runs
where there is no GPU. Run on a lent GPU: ``python bench/gpu_controlnet.py`` (a few minutes on an H200).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_controlnet
from bench_sd import load_both, sd_components, time_pair

TINY_BLOCKS: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "norm_num_groups": 8,
    "attention_head_dim": 4,
}


def save_controlnet_pipeline(size: str, folder: Path) -> Path:
    """Diffusers builds an SD ``StableDiffusionControlNetPipeline`` (``tiny`` or ``sd15`` sized) and saves it."""
    import diffusers

    components = sd_components(size, folder)
    if size == "tiny":
        config: dict[str, Any] = {
            "block_out_channels": (32, 64),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "norm_num_groups": 8,
            "attention_head_dim": 4,
            "cross_attention_dim": 32,
            "conditioning_embedding_out_channels": (16, 32),
        }
    else:
        config = bench_controlnet.SD15_CONTROLNET
    torch.manual_seed(1)
    controlnet = diffusers.ControlNetModel(**config)
    with torch.no_grad():
        for p in controlnet.parameters():  # non-zero residuals (a fresh ControlNet adds zeros)
            p.normal_(0, 0.02)
    pipe = diffusers.StableDiffusionControlNetPipeline(
        **components, controlnet=controlnet, requires_safety_checker=False
    )
    pipe.save_pretrained(folder / f"controlnet-{size}")
    return folder / f"controlnet-{size}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="smoke mode: tiny models, fp32, 2 steps")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="pipeline,step")
    args = parser.parse_args()
    cases = args.cases.split(",")
    dtype = torch.float32 if args.tiny or args.device == "cpu" else torch.float16
    steps = 2 if args.tiny else args.steps
    size = "tiny" if args.tiny else "sd15"
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    if "pipeline" in cases:
        px = 32 if args.tiny else 512
        rng = np.random.default_rng(0)
        condition = PIL.Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8))
        with tempfile.TemporaryDirectory(prefix="difflux-gpu-controlnet-") as tmp:
            ours, theirs = load_both(save_controlnet_pipeline(size, Path(tmp)), args.device, dtype)
            kw = {"prompt": "a photo of a house", "image": condition, "num_inference_steps": steps,
                  "output_type": "np"}  # fmt: skip
            a, b = time_pair(ours, theirs, args.repeat, sync, **kw)
            print(f"controlnet pipeline ({size}): {steps} steps {px}x{px} {dtype} {args.device}  difflux {a:.3f}s  "
                  f"diffusers {b:.3f}s  ratio {a / b:.2f}")  # fmt: skip
            del ours, theirs
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if "step" in cases:
        latent = 8 if args.tiny else 64
        if args.tiny:
            bench_controlnet.SD15_UNET.update(TINY_BLOCKS, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
            bench_controlnet.SD15_CONTROLNET.update(TINY_BLOCKS)
        ours_m, theirs_m = bench_controlnet.sd15_models(args.device, dtype)
        inputs = bench_controlnet.step_inputs(2, latent, args.device, dtype)
        a, b, diff = bench_controlnet.time_step(ours_m, theirs_m, inputs, max(args.repeat, 1) * 3, sync)
        times = f"difflux {a * 1000:.1f}ms  diffusers {b * 1000:.1f}ms  ratio {a / b:.2f}  max |diff| {diff:.2e}"
        print(f"controlnet step ({size}): UNet + ControlNet, batch 2, {latent}x{latent} latents {dtype} "
              f"{args.device}  {times}")  # fmt: skip


if __name__ == "__main__":
    main()
