"""PixArt-alpha / -sigma, difflux against Diffusers in the same run (CPU, fp32).

``--case tiny``: a tiny random PixArt-alpha pipeline (2 transformer blocks, 24 wide, T5 32 wide,
four-block VAE) built and saved by Diffusers; both libraries load the same folder and generate
64x64 images in 10 DPM-Solver steps with guidance, same seed; medians of ``--repeat`` calls after
one warm-up (goal: difflux / diffusers <= 0.9).

``--case transformer``: the PixArt-alpha transformer at the published size (28 blocks, 1152 wide,
16 heads, 4096-wide captions, ``sample_size`` 128 with size conditioning), random weights shared by
both libraries, one forward on 64x64 latents (1024 tokens) with 120 caption tokens, batch 1; calls
alternate so machine load hits both alike (goal <= 1.0). About two minutes on 2 cores.

Run: ``python bench/bench_pixart.py`` (both cases).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def build_tiny(folder: Path) -> Path:
    """Save a tiny random Diffusers ``PixArtAlphaPipeline`` into ``folder / "pipe"``."""
    import diffusers
    from difflux_transformers.testing import tiny_t5_encoder, tiny_t5_tokenizer

    torch.manual_seed(0)
    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=32, num_layers=2, num_attention_heads=2, attention_head_dim=12, cross_attention_dim=24,
        caption_channels=32, in_channels=4, out_channels=8,
    )  # fmt: skip
    with torch.no_grad():
        for p in transformer.parameters():
            p.normal_(0, 0.05)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=2, layers_per_block=1,
    )  # fmt: skip
    pipe = diffusers.PixArtAlphaPipeline(
        tokenizer=tiny_t5_tokenizer(folder / "tok"), text_encoder=tiny_t5_encoder(0), vae=vae,
        transformer=transformer, scheduler=diffusers.DPMSolverMultistepScheduler(),
    )  # fmt: skip
    pipe.save_pretrained(folder / "pipe")
    return folder / "pipe"


def alternate(calls: dict[str, Callable[[], Any]], repeat: int, warmup: bool = True) -> dict[str, float]:
    """Median seconds of each call, run alternately ``repeat`` times (after one warm-up each)."""
    if warmup:
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_tiny(repeat: int) -> float:
    import difflux
    import diffusers

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny(Path(tmp))
        ref = diffusers.PixArtAlphaPipeline.from_pretrained(folder)
        ours = difflux.DiffusionPipeline.from_pretrained(folder)
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
    kw = {"prompt": "a photo of a red cat", "height": 64, "width": 64, "num_inference_steps": 10,
          "use_resolution_binning": False, "output_type": "np"}  # fmt: skip

    def run(pipe: Any) -> Callable[[], Any]:
        return lambda: pipe(**kw, generator=torch.Generator().manual_seed(0)).images

    diff = float(abs(run(ref)() - run(ours)()).max())
    medians = alternate({"diffusers": run(ref), "difflux": run(ours)}, repeat)
    ratio = medians["difflux"] / medians["diffusers"]
    print(f"tiny PixArt-alpha, 10 steps 64x64 + CFG: diffusers {medians['diffusers'] * 1e3:.1f} ms, "
          f"difflux {medians['difflux'] * 1e3:.1f} ms, ratio {ratio:.2f} (goal <= 0.9); "
          f"max |diff| {diff:.2e}")  # fmt: skip
    return ratio


def bench_transformer(repeat: int, layers: int = 28) -> float:
    import diffusers
    from difflux_models.transformers import PixArtTransformer2DModel

    config: dict[str, Any] = {"sample_size": 128, "num_layers": layers, "num_attention_heads": 16,
                              "attention_head_dim": 72, "cross_attention_dim": 1152, "caption_channels": 4096,
                              "in_channels": 4, "out_channels": 8}  # fmt: skip
    torch.manual_seed(0)
    ref = diffusers.PixArtTransformer2DModel(**config).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02)
    ours = PixArtTransformer2DModel(**config).eval()
    ours.load_state_dict(ref.state_dict())
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    g = torch.Generator().manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(1, 4, 64, 64, generator=g),
        "encoder_hidden_states": torch.randn(1, 120, 4096, generator=g),
        "encoder_attention_mask": torch.ones(1, 120),
        "timestep": torch.tensor([500]),
        "added_cond_kwargs": {"resolution": torch.tensor([[512.0, 512.0]]), "aspect_ratio": torch.tensor([[1.0]])},
    }

    def run(model: Any) -> Callable[[], Any]:
        def call() -> Any:
            with torch.no_grad():
                return model(**inputs, return_dict=False)[0]

        return call

    diff = float((run(ref)() - run(ours)()).abs().max())
    medians = alternate({"diffusers": run(ref), "difflux": run(ours)}, repeat, warmup=False)
    ratio = medians["difflux"] / medians["diffusers"]
    print(f"PixArt-alpha transformer ({params:.0f}M params, {layers} blocks x 1152), one forward at 64x64 latents: "
          f"diffusers {medians['diffusers']:.2f} s, difflux {medians['difflux']:.2f} s, ratio {ratio:.2f} "
          f"(goal <= 1.0); max |diff| {diff:.2e}")  # fmt: skip
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("tiny", "transformer", "all"), default="all")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per library (tiny case)")
    parser.add_argument("--repeat-transformer", type=int, default=2, help="timed forwards per library")
    parser.add_argument("--layers", type=int, default=28, help="transformer blocks (fewer: a quick proxy)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the tiny case (the big one uses all)")
    args = parser.parse_args()
    if args.case in ("tiny", "all"):
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        bench_tiny(args.repeat)
        torch.set_num_threads(threads)
    if args.case in ("transformer", "all"):
        bench_transformer(args.repeat_transformer, args.layers)


if __name__ == "__main__":
    main()
