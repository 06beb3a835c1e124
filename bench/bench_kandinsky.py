"""Kandinsky 2.2 and 3, difflux against Diffusers in the same run (CPU, fp32).

``--case tiny``: tiny random pipelines that Diffusers builds and saves and both libraries load from the
same folder: Kandinsky 2.2 prior + decoder (the combined pipeline, 25 prior and 20 decoder steps,
32 px) and Kandinsky 3 text-to-image (20 steps, 16 px); each timed over ``--repeat`` calls after a
warm-up, calls alternating between the libraries; medians compared (goal: difflux / diffusers <= 0.9).

``--case unet``: the Kandinsky 2.2 decoder UNet at its published size (kandinsky-2-2-decoder:
384/768/1152/1536 channels, simple cross-attention, 1.2 B parameters) with random weights shared by
both libraries, one denoising step on batch 2 (guidance) at 64x64 latents (goal <= 1.0). About 10 GiB
of memory for the two copies. Run: ``python bench/bench_kandinsky.py [--case tiny|unet|all]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TINY_UNET: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 8,
    "addition_embed_type": "image",
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "encoder_hid_dim": 32,
    "encoder_hid_dim_type": "image_proj",
    "cross_attention_dim": 32,
    "attention_head_dim": 4,
    "resnet_time_scale_shift": "scale_shift",
    "norm_num_groups": 8,
}
MOVQ: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_type": "spatial",
    "num_vq_embeddings": 12,
    "vq_embed_dim": 4,
}
#: kandinsky-community/kandinsky-2-2-decoder's unet/config.json
PUBLISHED_UNET: dict[str, Any] = {
    **TINY_UNET,
    "block_out_channels": (384, 768, 1152, 1536),
    "layers_per_block": 3,
    "attention_head_dim": 64,
    "cross_attention_dim": 768,
    "encoder_hid_dim": 1280,
    "norm_num_groups": 32,
    "down_block_types": ("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
    "up_block_types": ("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
    "sample_size": 64,
}


def build(folder: Path) -> dict[str, Path]:
    """Save tiny random Diffusers Kandinsky 2.2 combined and Kandinsky 3 pipelines under ``folder``."""
    import diffusers
    from difflux_transformers.testing import (
        tiny_clip_text_model,
        tiny_clip_tokenizer,
        tiny_clip_vision,
        tiny_t5_encoder,
        tiny_t5_tokenizer,
    )

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**TINY_UNET)
    movq = diffusers.VQModel(**MOVQ)
    prior = diffusers.PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1)
    with torch.no_grad():
        prior.clip_std.fill_(1.0)
    image_encoder, processor = tiny_clip_vision(seed=1, image_size=32)
    k22 = diffusers.KandinskyV22CombinedPipeline(
        unet=unet,
        scheduler=diffusers.DDPMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012,
                                          clip_sample=False, variance_type="learned_range"),
        movq=movq,
        prior_prior=prior,
        prior_image_encoder=image_encoder,
        prior_text_encoder=tiny_clip_text_model(2, projection=True),
        prior_tokenizer=tiny_clip_tokenizer(folder / "clip_tok"),
        prior_scheduler=diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                                  clip_sample=True, clip_sample_range=10.0),
        prior_image_processor=processor,
    )  # fmt: skip
    k22.save_pretrained(folder / "k22")
    torch.manual_seed(3)
    k3_unet = diffusers.Kandinsky3UNet(
        in_channels=4, time_embedding_dim=4, groups=2, attention_head_dim=4, layers_per_block=3,
        block_out_channels=(32, 64), cross_attention_dim=4, encoder_hid_dim=32,
    )  # fmt: skip
    k3 = diffusers.Kandinsky3Pipeline(
        tokenizer=tiny_t5_tokenizer(folder / "t5_tok"),
        text_encoder=tiny_t5_encoder(seed=4),
        unet=k3_unet,
        scheduler=diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True),
        movq=movq,
    )
    k3.save_pretrained(folder / "k3")
    return {"k22": folder / "k22", "k3": folder / "k3"}


def alternate(ours: Any, theirs: Any, kwargs: dict[str, Any], repeat: int) -> tuple[float, float, float]:
    """``(difflux median s, diffusers median s, max |image diff|)`` over alternating calls after a warm-up each."""
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    a = ours(**kwargs, generator=torch.Generator().manual_seed(0)).images
    b = theirs(**kwargs, generator=torch.Generator().manual_seed(0)).images
    diff = float(np.abs(np.asarray(a) - np.asarray(b)).max())
    t_ours, t_theirs = [], []
    for _ in range(repeat):
        for pipe, times in ((ours, t_ours), (theirs, t_theirs)):
            start = time.perf_counter()
            pipe(**kwargs, generator=torch.Generator().manual_seed(0))
            times.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_theirs), diff


def bench_tiny(repeat: int) -> None:
    import difflux
    import diffusers

    cases = {
        "k22": ("Kandinsky 2.2 combined (25 prior + 20 decoder steps, 32 px)",
                {"prompt": "a red cat", "height": 32, "width": 32, "num_inference_steps": 20,
                 "prior_num_inference_steps": 25, "output_type": "np"}),
        "k3": ("Kandinsky 3 (20 steps, 16 px)",
               {"prompt": "a red cat", "height": 16, "width": 16, "num_inference_steps": 20, "output_type": "np"}),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folders = build(Path(tmp))
        for key, (title, kwargs) in cases.items():
            ours = difflux.DiffusionPipeline.from_pretrained(folders[key])
            theirs = diffusers.DiffusionPipeline.from_pretrained(folders[key])
            a, b, diff = alternate(ours, theirs, kwargs, repeat)
            print(f"tiny {title}, CFG, CPU fp32 (median of {repeat})")
            print(
                f"  diffusers {b * 1000:8.1f} ms   difflux {a * 1000:8.1f} ms   ratio difflux/diffusers "
                f"{a / b:.2f} (goal <= 0.9)   max |image diff| {diff:.2e}"
            )


def bench_unet(repeat: int) -> None:
    import diffusers
    from difflux_models import UNet2DConditionModel

    torch.manual_seed(0)
    theirs = diffusers.UNet2DConditionModel(**PUBLISHED_UNET).eval()
    with torch.device("meta"):
        ours = UNet2DConditionModel(**PUBLISHED_UNET)
    ours.load_state_dict(theirs.state_dict(), assign=True)
    ours.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 64, 64, generator=g)
    embeds = torch.randn(2, 1280, generator=g)
    t = torch.tensor(500)

    def step(model: Any) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(x, t, None, added_cond_kwargs={"image_embeds": embeds}, return_dict=False)[0]
        return out

    diff = float((step(ours) - step(theirs)).abs().max())
    t_ours, t_theirs = [], []
    for _ in range(repeat):
        for model, times in ((ours, t_ours), (theirs, t_theirs)):
            start = time.perf_counter()
            step(model)
            times.append(time.perf_counter() - start)
    a, b = statistics.median(t_ours), statistics.median(t_theirs)
    params = sum(p.numel() for p in theirs.parameters()) / 1e9
    print(f"Kandinsky 2.2 decoder UNet, published size ({params:.2f} B parameters), one step, batch 2, 64x64, "
          f"CPU fp32 (median of {repeat})")  # fmt: skip
    print(
        f"  diffusers {b:8.2f} s    difflux {a:8.2f} s    ratio difflux/diffusers {a / b:.2f} (goal <= 1.0)   "
        f"max |noise pred diff| {diff:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", choices=["tiny", "unet", "all"], default="all")
    args = parser.parse_args()
    if args.case in ("tiny", "all"):
        bench_tiny(args.repeat)
    if args.case in ("unet", "all"):
        bench_unet(max(1, args.repeat - 1))


if __name__ == "__main__":
    main()
