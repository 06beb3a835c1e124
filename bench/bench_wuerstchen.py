"""Würstchen, difflux against Diffusers in the same run (CPU, fp32).

A tiny random combined pipeline (prior + DiffNeXt decoder + Paella VQ-GAN, the sizes of
``plugins/wuerstchen/tests/conftest.py`` with wider channels) that Diffusers builds in memory (it cannot
reload Würstchen folders) and saves; difflux loads the folder. Each library runs the same call
(``--prior-steps`` prior and ``--steps`` decoder steps, 128 px → 3x3 embeddings → 32x32 latents)
``--repeat`` times after a warm-up, alternating; medians compared (goal: difflux / diffusers <= 0.9).
Run: ``python bench/bench_wuerstchen.py [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PRIOR: dict[str, Any] = {"c_in": 16, "c": 64, "depth": 2, "c_cond": 32, "c_r": 64, "nhead": 4}
DECODER: dict[str, Any] = {
    "c_cond": 32,
    "c_hidden": [32, 64],
    "nhead": [-1, 4],
    "blocks": [1, 2],
    "level_config": ["CT", "CTA"],
    "inject_effnet": [False, True],
    "effnet_embd": 16,
    "clip_embd": 32,
}
VQGAN: dict[str, Any] = {"bottleneck_blocks": 2, "embed_dim": 32, "num_vq_embeddings": 64}


def build(folder: Path) -> Any:
    from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer
    from diffusers import DDPMWuerstchenScheduler
    from diffusers.pipelines.deprecated.wuerstchen import (
        PaellaVQModel,
        WuerstchenCombinedPipeline,
        WuerstchenDiffNeXt,
        WuerstchenPrior,
    )

    torch.manual_seed(0)
    tokenizer = tiny_clip_tokenizer(folder / "vocab")
    pipe = WuerstchenCombinedPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_clip_text_model(1),
        decoder=WuerstchenDiffNeXt(**DECODER).eval(),
        scheduler=DDPMWuerstchenScheduler(),
        vqgan=PaellaVQModel(**VQGAN).eval(),
        prior_tokenizer=tokenizer,
        prior_text_encoder=tiny_clip_text_model(0),
        prior_prior=WuerstchenPrior(**PRIOR).eval(),
        prior_scheduler=DDPMWuerstchenScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder / "combined")
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--prior-steps", type=int, default=20)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    import difflux

    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        theirs = build(Path(tmp))
        ours = difflux.DiffusionPipeline.from_pretrained(Path(tmp) / "combined")
        ours.set_progress_bar_config(disable=True)
        kw = {
            "height": 128,
            "width": 128,
            "prior_num_inference_steps": args.prior_steps,
            "num_inference_steps": args.steps,
            "output_type": "pt",
        }

        def call(pipe: Any) -> tuple[float, torch.Tensor]:
            start = time.perf_counter()
            out = pipe("a cat", generator=torch.Generator().manual_seed(0), **kw).images
            return time.perf_counter() - start, out

        call(ours), call(theirs)
        times: dict[str, list[float]] = {"difflux": [], "diffusers": []}
        for _ in range(args.repeat):
            t, a = call(ours)
            times["difflux"].append(t)
            t, b = call(theirs)
            times["diffusers"].append(t)
        ratio = statistics.median(times["difflux"]) / statistics.median(times["diffusers"])
        print(
            f"tiny combined ({args.prior_steps} prior + {args.steps} decoder steps, 128 px): "
            f"difflux {statistics.median(times['difflux']) * 1e3:.1f} ms, "
            f"diffusers {statistics.median(times['diffusers']) * 1e3:.1f} ms, ratio {ratio:.2f}, "
            f"max |diff| {float((a - b).abs().max()):.2e}"
        )


if __name__ == "__main__":
    main()
