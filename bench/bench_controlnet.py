"""ControlNet Stable Diffusion end to end, difflux against Diffusers in the same run (CPU, fp32).

A tiny random SD pipeline with a tiny random ControlNet (the ``bench_sd.py`` tiny sizes), 20 steps
at 32x32, classifier-free guidance on. Diffusers builds and saves the pipeline; both libraries
load the same folder and run with the same seed, prompt and condition image; each is timed over
``--repeat`` calls after one untimed warm-up, and the medians are compared (goal: difflux /
diffusers <= 0.9). Run: ``python bench/bench_controlnet.py``.

``--case sd15`` (also in ``--case all``, the default): the SD 1.5-size UNet (860M parameters) and
ControlNet (361M) with random weights, one denoising step (ControlNet, then the UNet with its
residuals) on batch 2 at 64x64 latents (512 px condition image), CPU fp32, same weights in both
libraries; calls alternate so that machine load hits both alike (goal <= 1.0). About 3 minutes on
2 cores; ``--repeat`` sets the timed calls per library.
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


SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
SD15_CONTROLNET: dict[str, Any] = {
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
}


def sd15_models(device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """``((difflux unet, controlnet), (diffusers unet, controlnet))``: SD 1.5 sizes, the same random weights.

    The difflux models are built on the meta device and take the Diffusers tensors (no second copy).
    """
    import diffusers
    from difflux_controlnet import ControlNetModel
    from difflux_models import UNet2DConditionModel

    torch.manual_seed(0)
    theirs = (diffusers.UNet2DConditionModel(**SD15_UNET), diffusers.ControlNetModel(**SD15_CONTROLNET))
    with torch.no_grad():
        for p in theirs[1].parameters():  # non-zero residuals (a fresh ControlNet adds zeros)
            p.normal_(0, 0.02)
    if device != "cpu" or dtype != torch.float32:
        theirs = tuple(m.to(device=device, dtype=dtype) for m in theirs)  # type: ignore[assignment]
    theirs = tuple(m.eval() for m in theirs)  # type: ignore[assignment]
    ours = []
    pairs = ((UNet2DConditionModel, SD15_UNET, theirs[0]), (ControlNetModel, SD15_CONTROLNET, theirs[1]))
    for cls, config, ref in pairs:
        with torch.device("meta"):
            model = cls(**config)
        model.load_state_dict(ref.state_dict(), assign=True)
        ours.append(model.eval())
    return (ours[0], ours[1]), theirs


def one_step(models: tuple[Any, Any], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One ControlNet-guided UNet call: the ControlNet's residuals feed the UNet (what a pipeline step runs)."""
    unet, controlnet = models
    x, t, text = inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"]
    with torch.inference_mode():
        down, mid = controlnet(x, t, text, inputs["cond"], return_dict=False)
        out: torch.Tensor = unet(
            x, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False
        )[0]
    return out


def step_inputs(batch: int, latent: int, device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(batch, 4, latent, latent, generator=g).to(device, dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(batch, 77, 768, generator=g).to(device, dtype),
        "cond": torch.rand(batch, 3, 8 * latent, 8 * latent, generator=g).to(device, dtype),
    }


def time_step(ours: Any, theirs: Any, inputs: dict[str, torch.Tensor], repeat: int, sync: Any = None) -> Any:
    """``(difflux median s, diffusers median s, max |output diff|)``: one warm-up each, then alternating calls."""
    a = one_step(ours, inputs)
    b = one_step(theirs, inputs)
    diff = float((a.float() - b.float()).abs().max())
    t_ours, t_theirs = [], []
    for _ in range(repeat):
        for models, times in ((ours, t_ours), (theirs, t_theirs)):
            start = time.perf_counter()
            one_step(models, inputs)
            if sync is not None:
                sync()
            times.append(time.perf_counter() - start)
    return statistics.median(t_ours), statistics.median(t_theirs), diff


def bench_sd15(repeat: int) -> None:
    ours, theirs = sd15_models()
    inputs = step_inputs(2, 64, "cpu", torch.float32)
    a, b, diff = time_step(ours, theirs, inputs, repeat)
    print(f"SD1.5-size UNet + ControlNet, one step, batch 2, 64x64 latents, CPU fp32 (median of {repeat})")
    print(
        f"  diffusers {b:8.2f} s    difflux {a:8.2f} s    ratio difflux/diffusers {a / b:.2f} (goal <= 1.0)   "
        f"max |noise pred diff| {diff:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", choices=["tiny", "sd15", "all"], default="all")
    args = parser.parse_args()
    if args.case in ("tiny", "all"):
        bench_tiny(args.steps, args.repeat)
    if args.case in ("sd15", "all"):
        bench_sd15(max(1, args.repeat - 1))


def bench_tiny(steps: int, repeat: int) -> None:
    import difflux
    import diffusers

    rng = np.random.default_rng(0)
    condition = PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    kwargs = {
        "prompt": "a photo of a house",
        "image": condition,
        "num_inference_steps": steps,
        "output_type": "np",
    }
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        ours = difflux.DiffusionPipeline.from_pretrained(Path(tmp) / "pipe")
        ref = diffusers.StableDiffusionControlNetPipeline.from_pretrained(Path(tmp) / "pipe")
        t_ref, img_ref = timed(ref, kwargs, repeat)
        t_ours, img_ours = timed(ours, kwargs, repeat)
    diff = float(np.abs(img_ref - img_ours).max())
    print(f"tiny ControlNet SD, {steps} steps, 32x32, CFG, CPU fp32 (median of {repeat})")
    print(
        f"  diffusers {t_ref * 1000:8.1f} ms   difflux {t_ours * 1000:8.1f} ms   "
        f"ratio difflux/diffusers {t_ours / t_ref:.2f} (goal <= 0.9)   max |image diff| {diff:.2e}"
    )


if __name__ == "__main__":
    main()
