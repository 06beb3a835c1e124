"""Attention-guided Stable Diffusion (difflux-sd-guidance) against Diffusers in the same run (CPU, fp32).

``--case tiny``: each pipeline end to end on the tiny random SD components of the tests (16x16
latents, 32 px images), classifier-free guidance on, ``--steps`` steps (DiffEdit: mask, inversion
and edit; Pix2Pix Zero: the reference and the guided run). Diffusers builds and saves
the pipeline; both libraries load the same folder and run with the same seed and inputs; calls
alternate (one warm-up each), medians of ``--repeat`` are compared (goal: difflux / diffusers <= 0.9).

``--case sd15``: SAG and Attend-and-Excite at SD 1.5 size: the SD 1.5 UNet (860M parameters, random
weights, the same tensors in both libraries), a CLIP text encoder 768 wide (5 layers), one DDIM
step at 64x64 latents, CPU fp32, latents out (goal <= 1.0). SAG: the guided UNet call (batch 2)
plus the degraded one (batch 1). Attend-and-Excite: one gradient pass (batch 1, cross-attention
maps at 16x16) plus the guided call; ``thresholds={}`` (no refinement loop, which repeats the
gradient pass up to 20 times in both libraries alike).

Run: ``python bench/bench_sd_guidance.py`` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the tests' Diffusers component builder (test-only, next to the sd-guidance tests)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "sd-guidance" / "tests"))

PROMPT = "a cat and a dog"


def alternate(ours: Any, theirs: Any, kwargs: dict[str, Any], repeat: int) -> tuple[float, float, float]:
    """``(difflux median s, diffusers median s, max |output diff|)``: one warm-up each, then alternating calls.

    ``kwargs["__call__"]`` (optional) is ``fn(pipe, generator) -> output array`` run instead of ``pipe(**kwargs)``.
    """
    kwargs = dict(kwargs)
    fn = kwargs.pop("__call__", None) or (lambda pipe, gen: pipe(**kwargs, generator=gen).images)
    outs = []
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
        outs.append(np.asarray(fn(pipe, torch.Generator().manual_seed(0))))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for pipe, bucket in zip((ours, theirs), times):
            start = time.perf_counter()
            fn(pipe, torch.Generator().manual_seed(0))
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1]), float(np.abs(outs[0] - outs[1]).max())


def diffedit(steps: int) -> Any:
    """DiffEdit's three calls: the mask, the inversion, the edit (the mask from swapped embeddings in Diffusers)."""
    import PIL.Image

    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))

    def run(pipe: Any, gen: torch.Generator) -> Any:
        import diffusers

        if isinstance(pipe, diffusers.DiffusionPipeline):
            src, neg = pipe.encode_prompt("a cat", "cpu", 1, True)
            tgt, tneg = pipe.encode_prompt("a dog", "cpu", 1, True)
            embeds = {
                "source_prompt_embeds": neg,
                "source_negative_prompt_embeds": src,
                "target_prompt_embeds": tneg,
                "target_negative_prompt_embeds": tgt,
            }
        else:
            embeds = {"source_prompt": "a cat", "target_prompt": "a dog"}
        mask = pipe.generate_mask(
            image=image,
            num_maps_per_mask=2,
            num_inference_steps=steps,
            generator=gen,
            mask_thresholding_ratio=1.0,
            **embeds,
        )
        inverted = pipe.invert(prompt="a cat", image=image, num_inference_steps=steps, generator=gen).latents
        return pipe(
            prompt="a dog",
            mask_image=mask.astype(np.float32),
            image_latents=inverted,
            num_inference_steps=steps,
            generator=gen,
            output_type="np",
        ).images

    return run


def report(name: str, result: tuple[float, float, float], goal: float) -> None:
    a, b, diff = result
    print(
        f"  {name:<40} diffusers {b * 1000:9.1f} ms   difflux {a * 1000:9.1f} ms   "
        f"ratio {a / b:.2f} (goal <= {goal})   max |diff| {diff:.1e}"
    )


def tiny_cases(steps: int) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """``(Diffusers class, UNet overrides, call kwargs)`` of each pipeline."""
    boxes = {"gligen_boxes": [[0.1, 0.2, 0.5, 0.8], [0.55, 0.1, 0.95, 0.6]], "gligen_phrases": ["a cat", "a dog"]}
    p2p = {"source_embeds": None, "target_embeds": None}  # filled per pipeline (its text encoder)
    return [
        ("StableDiffusionSAGPipeline", {}, {}),
        (
            "StableDiffusionAttendAndExcitePipeline",
            {},
            {"token_indices": [2], "attn_res": (8, 8), "max_iter_to_alter": 3},
        ),
        ("StableDiffusionGLIGENPipeline", {"attention_type": "gated"}, boxes),
        ("StableDiffusionGLIGENTextImagePipeline", {"attention_type": "gated-text-image"}, boxes),
        ("StableDiffusionDiffEditPipeline", {}, {"__call__": diffedit(steps)}),
        ("StableDiffusionPix2PixZeroPipeline", {}, p2p),
    ]


def bench_tiny(steps: int, repeat: int) -> None:
    import diffusers
    from difflux_stable_diffusion.testing import load_difflux
    from sd_oracle import diffusers_sd_components

    print(f"tiny pipelines end to end, {steps} steps, 32x32, CFG, CPU fp32 (median of {repeat})")
    with tempfile.TemporaryDirectory() as tmp:
        for cls, unet, extra in tiny_cases(steps):
            label = cls
            folder = Path(tmp) / label
            components = diffusers_sd_components(folder, **unet)
            if cls == "StableDiffusionGLIGENTextImagePipeline":
                from difflux_transformers.testing import tiny_clip_vision
                from transformers import CLIPProcessor

                encoder, processor = tiny_clip_vision(0)
                components.update(
                    processor=CLIPProcessor(image_processor=processor, tokenizer=components["tokenizer"]),
                    image_encoder=encoder,
                    image_project=diffusers.pipelines.stable_diffusion.CLIPImageProjection(hidden_size=32),
                )
            if cls in ("StableDiffusionDiffEditPipeline", "StableDiffusionPix2PixZeroPipeline"):
                components["inverse_scheduler"] = diffusers.DDIMInverseScheduler.from_config(
                    components["scheduler"].config
                )
            if cls == "StableDiffusionPix2PixZeroPipeline":
                components.update(caption_generator=None, caption_processor=None)
            ref = getattr(diffusers, cls)(**components, requires_safety_checker=False)
            ref.save_pretrained(folder / "saved")
            ours = load_difflux(folder / "saved")
            kwargs = {"prompt": PROMPT, "num_inference_steps": steps, "output_type": "np", **extra}
            if "source_embeds" in extra:
                kwargs.update(source_embeds=ours.get_embeds(["a cat"]), target_embeds=ours.get_embeds(["a dog"]))
            report(label, alternate(ours, ref, kwargs, repeat), 0.9)


SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}


def sd15_pipelines(cls: str) -> tuple[Any, Any]:
    """``(difflux, Diffusers)`` ``cls`` pipelines sharing the SD 1.5-size UNet weights, the text encoder and
    tokenizer; a tiny two-block VAE (latents out: it never runs), DDIM."""
    import difflux_sd_guidance
    import diffusers
    from difflux_models import AutoencoderKL, UNet2DConditionModel
    from difflux_schedulers.ddim import DDIMScheduler
    from difflux_transformers.testing import tiny_clip_text_model
    from sd_oracle import diffusers_sd_components

    with tempfile.TemporaryDirectory() as tmp:
        parts = diffusers_sd_components(Path(tmp))
    torch.manual_seed(0)
    parts["unet"] = diffusers.UNet2DConditionModel(**SD15_UNET).eval()
    parts["text_encoder"] = tiny_clip_text_model(0, hidden_size=768, projection_dim=768)
    theirs = getattr(diffusers, cls)(**parts, requires_safety_checker=False)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**{k: v for k, v in parts["vae"].config.items() if not k.startswith("_")})
    unet.load_state_dict(parts["unet"].state_dict(), assign=True)
    vae.load_state_dict(parts["vae"].state_dict(), assign=True)
    ours = getattr(difflux_sd_guidance, cls)(
        vae=vae.eval(),
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=unet.eval(),
        scheduler=DDIMScheduler.from_config(dict(parts["scheduler"].config)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return ours, theirs


def bench_sd15(repeat: int) -> None:
    print(f"SD1.5-size UNet, one DDIM step, 64x64 latents, CFG, CPU fp32, latents out (median of {repeat})")
    base = {"prompt": PROMPT, "num_inference_steps": 1, "height": 128, "width": 128, "output_type": "latent"}
    cases = [
        ("StableDiffusionSAGPipeline", {}),
        ("StableDiffusionAttendAndExcitePipeline", {"token_indices": [2], "thresholds": {}, "attn_res": (16, 16)}),
    ]
    for cls, extra in cases:
        ours, theirs = sd15_pipelines(cls)
        report(cls, alternate(ours, theirs, {**base, **extra}, repeat), 1.0)
        del ours, theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", choices=["tiny", "sd15", "all"], default="all")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.case in ("tiny", "all"):
        bench_tiny(args.steps, args.repeat)
    if args.case in ("sd15", "all"):
        bench_sd15(max(1, args.repeat - 2))


if __name__ == "__main__":
    main()
