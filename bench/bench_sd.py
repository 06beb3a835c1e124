"""Stable Diffusion end to end, difflux against Diffusers in the same run (CPU, fp32).

(a) ``--case tiny``: a tiny random SD pipeline, 20 steps at 32x32 (goal: difflux / diffusers <= 0.9).
(b) ``--case sd15``: SD1.5-size random weights (the published UNet / VAE / CLIP-L configs) at
    512x512, 2 steps (goal <= 1.0); takes minutes.

Both libraries load the same saved folder; each is timed over ``--repeat`` calls with the same
seed (one untimed warm-up first), and the medians are compared.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _tokenizer(folder: Path, max_length: int = 77) -> Any:
    from difflux_transformers.testing import tiny_clip_tokenizer

    return tiny_clip_tokenizer(folder, model_max_length=max_length)


def sd_components(size: str, folder: Path) -> dict[str, Any]:
    """Diffusers components with random weights: ``tiny``, ``sd15`` or ``sdxl`` sized."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    sched = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}
    if size == "tiny":
        from difflux_transformers.testing import tiny_clip_text_model

        return {
            "unet": diffusers.UNet2DConditionModel(
                block_out_channels=(32, 64),
                layers_per_block=2,
                sample_size=16,
                in_channels=4,
                out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=32,
                norm_num_groups=8,
                attention_head_dim=4,
            ),
            "vae": diffusers.AutoencoderKL(
                block_out_channels=[32, 64],
                in_channels=3,
                out_channels=3,
                latent_channels=4,
                norm_num_groups=8,
                down_block_types=["DownEncoderBlock2D"] * 2,
                up_block_types=["UpDecoderBlock2D"] * 2,
            ),
            "text_encoder": tiny_clip_text_model(0),
            "tokenizer": _tokenizer(folder / "vocab"),
            "scheduler": diffusers.DDIMScheduler(**sched, clip_sample=False),
            "safety_checker": None,
            "feature_extractor": None,
            "image_encoder": None,
        }
    clip_l = {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "vocab_size": 49408,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    }
    vae = diffusers.AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
        sample_size=512 if size == "sd15" else 1024,
        force_upcast=size == "sdxl",
    )
    if size == "sd15":
        return {
            "unet": diffusers.UNet2DConditionModel(
                sample_size=64,
                cross_attention_dim=768,
                attention_head_dim=8,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            ),
            "vae": vae,
            "text_encoder": transformers.CLIPTextModel(transformers.CLIPTextConfig(**clip_l)),
            "tokenizer": _tokenizer(folder / "vocab"),
            "scheduler": diffusers.PNDMScheduler(**sched, skip_prk_steps=True),
            "safety_checker": None,
            "feature_extractor": None,
            "image_encoder": None,
        }
    if size == "sdxl":
        big_g = {
            **clip_l,
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_attention_heads": 20,
            "projection_dim": 1280,
            "hidden_act": "gelu",
        }
        return {
            "unet": diffusers.UNet2DConditionModel(
                sample_size=128,
                cross_attention_dim=2048,
                attention_head_dim=(5, 10, 20),
                block_out_channels=(320, 640, 1280),
                transformer_layers_per_block=(1, 2, 10),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                addition_embed_type="text_time",
                addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
                use_linear_projection=True,
            ),
            "vae": vae,
            "text_encoder": transformers.CLIPTextModel(transformers.CLIPTextConfig(**clip_l)),
            "text_encoder_2": transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**big_g)),
            "tokenizer": _tokenizer(folder / "vocab"),
            "tokenizer_2": _tokenizer(folder / "vocab_2"),
            "scheduler": diffusers.EulerDiscreteScheduler(**sched, timestep_spacing="leading"),
            "image_encoder": None,
            "feature_extractor": None,
        }
    raise ValueError(f"unknown size {size!r}")


def save_pipeline(size: str, folder: Path) -> Path:
    """Build the ``size`` pipeline with Diffusers and save it into ``folder / size``."""
    import diffusers

    name = "StableDiffusionXLPipeline" if size == "sdxl" else "StableDiffusionPipeline"
    extra = {} if size == "sdxl" else {"requires_safety_checker": False}
    pipe = getattr(diffusers, name)(**sd_components(size, folder), **extra)
    pipe.save_pretrained(folder / size)
    return folder / size


def load_both(folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    import difflux
    import diffusers

    ours = difflux.DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    theirs = diffusers.DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    return ours, theirs


def time_call(pipe: Any, repeat: int, sync: Any = None, **kw: Any) -> float:
    """Median seconds of ``repeat`` calls after one untimed warm-up (``repeat=0``: time the one call)."""
    times = []
    for _ in range(max(repeat, 0) + 1):
        start = time.perf_counter()
        pipe(**kw, generator=torch.Generator().manual_seed(0))
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:] or times)


def time_pair(ours: Any, theirs: Any, repeat: int, sync: Any = None, **kw: Any) -> tuple[float, float]:
    """Median seconds of each, alternating calls so that machine load hits both alike."""
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeat):
        a.append(time_call(ours, 0, sync, **kw))
        b.append(time_call(theirs, 0, sync, **kw))
    return statistics.median(a), statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=["tiny", "sd15", "all"], default="tiny")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = {"tiny": (20, 32, 0.9), "sd15": (2, 512, 1.0)}
    chosen = list(cases) if args.case == "all" else [args.case]
    ok = True
    with tempfile.TemporaryDirectory(prefix="difflux-bench-sd-") as tmp:
        for case in chosen:
            steps, px, goal = cases[case]
            repeat = args.repeat if case == "tiny" else 1
            ours, theirs = load_both(save_pipeline(case, Path(tmp)))
            for pipe in (ours, theirs):  # warm-up
                pipe(prompt="a cat", num_inference_steps=1, height=px, width=px, output_type="np")
            kw = {
                "prompt": "a photo of a cat",
                "num_inference_steps": steps,
                "height": px,
                "width": px,
                "output_type": "np",
            }
            ours_s, theirs_s = time_pair(ours, theirs, repeat, **kw)
            ratio = ours_s / theirs_s
            ok &= ratio <= goal
            print(
                f"{case}: {steps} steps {px}x{px} fp32 cpu  difflux {ours_s:.3f}s  diffusers {theirs_s:.3f}s  "
                f"ratio {ratio:.2f} (goal <= {goal})"
            )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
