"""T2I-Adapter and ControlNet-XS pipelines end to end, difflux against Diffusers in the same run (CPU, fp32).

Four tiny random pipelines (the ``bench_controlnet.py`` tiny widths: 32/64-channel UNets, a 2x VAE,
32x32 images, classifier-free guidance on): ``StableDiffusionAdapterPipeline``,
``StableDiffusionXLAdapterPipeline``, ``StableDiffusionControlNetXSPipeline`` and
``StableDiffusionXLControlNetXSPipeline``, ``--steps`` steps (default 20). Diffusers builds, randomises
and saves each pipeline; both libraries load the same folder and run with the same seed, prompt and
condition image. After one untimed warm-up each, calls alternate between the libraries (so machine
load hits both alike) and the medians of ``--repeat`` calls are compared (goal: difflux / diffusers
<= 0.9). Run: ``python bench/bench_adapters.py`` (``--case adapter|xs|all``); about a minute on 2 cores.
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

BLOCKS: dict[str, Any] = {"layers_per_block": 2, "cross_attention_dim": 32, "norm_num_groups": 8}


def _random(model: Any, std: float = 0.05) -> Any:
    with torch.no_grad():
        for p in model.parameters():  # non-zero control (fresh adapters / XS branches add zeros)
            p.normal_(0, std)
    return model


def _parts(folder: Path, xl: bool) -> dict[str, Any]:
    import diffusers
    from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        block_out_channels=[32, 64],
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    )
    sched = diffusers.EulerDiscreteScheduler if xl else diffusers.DDIMScheduler
    parts = {
        "vae": vae,
        "text_encoder": tiny_clip_text_model(0),
        "tokenizer": tiny_clip_tokenizer(folder / "vocab"),
        "scheduler": sched(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1),
    }
    if xl:
        parts.update(text_encoder_2=tiny_clip_text_model(1, projection=True), tokenizer_2=parts["tokenizer"])
    return parts


def _xl_unet(down: tuple[str, ...], up: tuple[str, ...], widths: tuple[int, ...]) -> Any:
    import diffusers

    return diffusers.UNet2DConditionModel(
        **{**BLOCKS, "cross_attention_dim": 64},
        sample_size=16,
        block_out_channels=widths,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=4,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )


def build(folder: Path, name: str) -> str:
    """Save the tiny Diffusers pipeline ``name`` into ``folder / name``; returns its Diffusers class name."""
    import diffusers

    torch.manual_seed(0)
    sd_down, sd_up = ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
    if name == "sd-adapter":
        unet = diffusers.UNet2DConditionModel(
            **BLOCKS,
            sample_size=16,
            block_out_channels=(32, 64),
            down_block_types=sd_down,
            up_block_types=sd_up,
            attention_head_dim=4,
        )
        adapter = _random(diffusers.T2IAdapter(channels=[32, 64], num_res_blocks=2, downscale_factor=2))
        pipe: Any = diffusers.StableDiffusionAdapterPipeline(
            **_parts(folder, False),
            unet=unet,
            adapter=adapter,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif name == "sdxl-adapter":
        down = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
        unet = _xl_unet(down, ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), (32, 64, 64))
        adapter = _random(
            diffusers.T2IAdapter(
                channels=[32, 64, 64, 64], num_res_blocks=2, downscale_factor=4, adapter_type="full_adapter_xl"
            )
        )
        pipe = diffusers.StableDiffusionXLAdapterPipeline(**_parts(folder, True), unet=unet, adapter=adapter)
    elif name == "sd-xs":
        unet = diffusers.UNet2DConditionModel(
            **BLOCKS,
            sample_size=16,
            block_out_channels=(32, 64),
            down_block_types=sd_down,
            up_block_types=sd_up,
            attention_head_dim=4,
        )
        xs = diffusers.ControlNetXSAdapter.from_unet(
            unet, size_ratio=0.125, conditioning_embedding_out_channels=(16, 32)
        )
        pipe = diffusers.StableDiffusionControlNetXSPipeline(
            **_parts(folder, False),
            unet=unet,
            controlnet=_random(xs),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        _random(pipe.unet)
    else:
        unet = _xl_unet(("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D"), (32, 64))
        xs = diffusers.ControlNetXSAdapter.from_unet(
            unet, size_ratio=0.125, conditioning_embedding_out_channels=(16, 32)
        )
        pipe = diffusers.StableDiffusionXLControlNetXSPipeline(
            **_parts(folder, True), unet=unet, controlnet=_random(xs), add_watermarker=False
        )
        _random(pipe.unet)
    pipe.save_pretrained(folder / name)
    return type(pipe).__name__


def bench(name: str, steps: int, repeat: int) -> None:
    import difflux
    import diffusers

    rng = np.random.default_rng(0)
    condition = PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    kwargs = {"prompt": "a photo of a house", "image": condition, "num_inference_steps": steps, "output_type": "np"}
    with tempfile.TemporaryDirectory() as tmp:
        cls = build(Path(tmp), name)
        ref = getattr(diffusers, cls).from_pretrained(Path(tmp) / name)
        ours = difflux.DiffusionPipeline.from_pretrained(Path(tmp) / name)
    times: dict[str, list[float]] = {"ref": [], "ours": []}
    images: dict[str, np.ndarray] = {}
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
        pipe(**kwargs, generator=torch.Generator().manual_seed(0))  # warm-up
    for _ in range(repeat):
        for key, pipe in (("ref", ref), ("ours", ours)):
            start = time.perf_counter()
            images[key] = np.asarray(pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images)
            times[key].append(time.perf_counter() - start)
    t_ref, t_ours = statistics.median(times["ref"]), statistics.median(times["ours"])
    diff = float(np.abs(images["ref"] - images["ours"]).max())
    print(
        f"{cls:40s} {steps} steps  diffusers {t_ref * 1000:8.1f} ms   difflux {t_ours * 1000:8.1f} ms   "
        f"ratio difflux/diffusers {t_ours / t_ref:.2f} (goal <= 0.9)   max |image diff| {diff:.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", choices=["adapter", "xs", "all"], default="all")
    args = parser.parse_args()
    print(f"tiny pipelines, 32x32, CFG, CPU fp32, median of {args.repeat} alternating calls")
    names = {"adapter": ["sd-adapter", "sdxl-adapter"], "xs": ["sd-xs", "sdxl-xs"]}
    for case in ("adapter", "xs"):
        if args.case in (case, "all"):
            for name in names[case]:
                bench(name, args.steps, args.repeat)


if __name__ == "__main__":
    main()
