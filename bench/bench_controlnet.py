"""ControlNet Stable Diffusion end to end, difflux against Diffusers in the same run (CPU, fp32).

A tiny random SD pipeline with a tiny random ControlNet (the ``bench_sd.py`` tiny sizes), 20 steps
at 32x32, classifier-free guidance on. Diffusers builds and saves the pipeline; both libraries
load the same folder and run with the same seed, prompt and condition image; each is timed over
``--repeat`` calls after one untimed warm-up, and the medians are compared (goal: difflux /
diffusers <= 0.9). Run: ``python bench/bench_controlnet.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch


def build(folder: Path) -> None:
    """Save a tiny random Diffusers ``StableDiffusionControlNetPipeline`` into ``folder``."""
    import diffusers
    from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

    torch.manual_seed(0)
    blocks = {
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "cross_attention_dim": 32,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "norm_num_groups": 8,
        "attention_head_dim": 4,
    }
    unet = diffusers.UNet2DConditionModel(**blocks, sample_size=16, up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
    controlnet = diffusers.ControlNetModel(**blocks, conditioning_embedding_out_channels=(16, 32))
    with torch.no_grad():
        for p in controlnet.parameters():  # non-zero residuals (a fresh ControlNet adds zeros)
            p.normal_(0, 0.05)
    vae = diffusers.AutoencoderKL(
        block_out_channels=[32, 64],
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    )
    sched = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False
    )
    pipe = diffusers.StableDiffusionControlNetPipeline(
        vae=vae,
        text_encoder=tiny_clip_text_model(0),
        tokenizer=tiny_clip_tokenizer(folder / "vocab"),
        unet=unet,
        controlnet=controlnet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "pipe")


def timed(pipe: Any, kwargs: dict[str, Any], repeat: int) -> tuple[float, np.ndarray]:
    pipe.set_progress_bar_config(disable=True)
    pipe(**kwargs, generator=torch.Generator().manual_seed(0))  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
        times.append(time.perf_counter() - start)
    return statistics.median(times), np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import difflux
    import diffusers

    rng = np.random.default_rng(0)
    condition = PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    kwargs = {
        "prompt": "a photo of a house",
        "image": condition,
        "num_inference_steps": args.steps,
        "output_type": "np",
    }
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        ours = difflux.DiffusionPipeline.from_pretrained(Path(tmp) / "pipe")
        ref = diffusers.StableDiffusionControlNetPipeline.from_pretrained(Path(tmp) / "pipe")
        t_ref, img_ref = timed(ref, kwargs, args.repeat)
        t_ours, img_ours = timed(ours, kwargs, args.repeat)
    diff = float(np.abs(img_ref - img_ours).max())
    print(f"tiny ControlNet SD, {args.steps} steps, 32x32, CFG, CPU fp32 (median of {args.repeat})")
    print(
        f"  diffusers {t_ref * 1000:8.1f} ms   difflux {t_ours * 1000:8.1f} ms   "
        f"ratio difflux/diffusers {t_ours / t_ref:.2f} (goal <= 0.9)   max |image diff| {diff:.2e}"
    )


if __name__ == "__main__":
    main()
