"""The sd-variants pipelines end to end, difflux against Diffusers in the same run (CPU, fp32).

Each pipeline is built tiny and random by Diffusers (the ``bench_sd.py`` tiny sizes: UNet blocks of
32/64 channels, two layers each, 32x32 images), saved and loaded by difflux (AltDiffusion and Paint by
Example, which Diffusers cannot reload, run from the same in-memory components); both run with the
same seed and inputs, alternating, one untimed warm-up then ``--repeat`` timed calls each; the
medians are compared (goal: difflux / diffusers <= 0.9). Run: ``python bench/bench_sd_variants.py``
(about 3 minutes on 2 cores); ``--only NAME`` runs one pipeline, ``--steps`` sets the steps.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 16,
    "cross_attention_dim": 32,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 8,
    "attention_head_dim": 4,
}
SDXL_UNET: dict[str, Any] = {
    **UNET,
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
    "cross_attention_dim": 64,
}


def _vae(**overrides: Any) -> Any:
    import diffusers

    torch.manual_seed(0)
    config: dict[str, Any] = {"block_out_channels": [32, 64], "latent_channels": 4, "norm_num_groups": 8,
                              "down_block_types": ["DownEncoderBlock2D"] * 2,
                              "up_block_types": ["UpDecoderBlock2D"] * 2}
    return diffusers.AutoencoderKL(**{**config, **overrides})


def _sched(name: str, **config: Any) -> Any:
    import diffusers

    return getattr(diffusers, name)(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **config)


def sd(folder: Path, sched: str = "DDIMScheduler", image_encoder: bool = True, vae: dict[str, Any] | None = None,
       **unet: Any) -> dict[str, Any]:
    import diffusers
    from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

    torch.manual_seed(0)
    out = {"unet": diffusers.UNet2DConditionModel(**{**UNET, **unet}), "vae": _vae(**(vae or {})),
           "text_encoder": tiny_clip_text_model(0), "tokenizer": tiny_clip_tokenizer(folder / "vocab"),
           "scheduler": _sched(sched, steps_offset=1, clip_sample=False) if "DDIM" in sched else _sched(sched),
           "safety_checker": None, "feature_extractor": None}
    if image_encoder:
        out["image_encoder"] = None
    return out


def sdxl(folder: Path) -> dict[str, Any]:
    import diffusers
    from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer

    torch.manual_seed(0)
    return {"unet": diffusers.UNet2DConditionModel(**{**SDXL_UNET, "in_channels": 8}), "vae": _vae(),
            "text_encoder": tiny_clip_text_model(0), "text_encoder_2": tiny_clip_text_model(1, projection=True),
            "tokenizer": tiny_clip_tokenizer(folder / "v1"), "tokenizer_2": tiny_clip_tokenizer(folder / "v2"),
            "scheduler": _sched("EulerDiscreteScheduler", timestep_spacing="leading", steps_offset=1)}


def alt(folder: Path) -> dict[str, Any]:
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig,
        RobertaSeriesModelWithTransformation,
    )
    from transformers import XLMRobertaTokenizer

    words = ["▁a", "▁photo", "▁of", "▁cat", "▁dog", "▁red", "▁horse", "▁the", "▁on", "▁blue"]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *((w, -float(i)) for i, w in
                                                                          enumerate(words, 1)), ("<mask>", 0.0)]
    config = RobertaSeriesConfig(hidden_size=32, project_dim=32, intermediate_size=37, num_attention_heads=4,
                                 num_hidden_layers=2, vocab_size=len(vocab), max_position_embeddings=80)
    torch.manual_seed(0)
    return {**sd(folder), "text_encoder": RobertaSeriesModelWithTransformation(config).eval(),
            "tokenizer": XLMRobertaTokenizer(vocab=vocab, model_max_length=77)}


def paint(folder: Path) -> dict[str, Any]:
    from diffusers.pipelines.deprecated.paint_by_example.image_encoder import PaintByExampleImageEncoder
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    base = sd(folder, in_channels=9)
    config = CLIPVisionConfig(hidden_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4,
                              num_hidden_layers=5, image_size=32, patch_size=4)
    torch.manual_seed(0)
    return {"vae": base["vae"], "unet": base["unet"], "scheduler": base["scheduler"],
            "image_encoder": PaintByExampleImageEncoder(config, proj_size=32).eval(), "safety_checker": None,
            "feature_extractor": CLIPImageProcessor(crop_size=32, size=32)}


def picture(seed: int, mode: str = "RGB") -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "L":
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:24] = 255
        return PIL.Image.fromarray(mask)
    return PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


PROMPT = "a photo of a cat"
VAE8 = {"block_out_channels": [32, 32, 64, 64], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 1}

#: name -> (components builder, call arguments, pipeline config, built in memory)
CASES: dict[str, tuple[Callable[[Path], dict[str, Any]], dict[str, Any], dict[str, Any], bool]] = {
    "LatentConsistencyModelPipeline": (lambda f: sd(f, "LCMScheduler", time_cond_proj_dim=32),
                                       {"prompt": PROMPT, "num_inference_steps": 4},
                                       {"requires_safety_checker": False}, False),
    "LatentConsistencyModelImg2ImgPipeline": (lambda f: sd(f, "LCMScheduler", time_cond_proj_dim=32),
                                              {"prompt": PROMPT, "image": picture(1), "num_inference_steps": 4},
                                              {"requires_safety_checker": False}, False),
    "StableDiffusionInstructPix2PixPipeline": (lambda f: sd(f, "EulerAncestralDiscreteScheduler", in_channels=8),
                                               {"prompt": PROMPT, "image": picture(2)},
                                               {"requires_safety_checker": False}, False),
    "StableDiffusionXLInstructPix2PixPipeline": (sdxl, {"prompt": PROMPT, "image": picture(2), "height": 32,
                                                        "width": 32}, {"add_watermarker": False}, False),
    "StableDiffusionPanoramaPipeline": (lambda f: sd(f, vae=VAE8), {"prompt": PROMPT, "height": 64, "width": 576,
                                                                    "view_batch_size": 3},
                                        {"requires_safety_checker": False}, False),
    "StableDiffusionLDM3DPipeline": (lambda f: sd(f, vae={"in_channels": 4, "out_channels": 4}),
                                     {"prompt": PROMPT}, {"requires_safety_checker": False}, False),
    "StableDiffusionParadigmsPipeline": (lambda f: sd(f, "DDPMParallelScheduler", image_encoder=False),
                                         {"prompt": PROMPT, "parallel": 4}, {"requires_safety_checker": False}, False),
    "SemanticStableDiffusionPipeline": (lambda f: sd(f, image_encoder=False),
                                        {"prompt": PROMPT, "editing_prompt": ["a dog", "red"], "edit_warmup_steps": 2},
                                        {"requires_safety_checker": False}, False),
    "CycleDiffusionPipeline": (lambda f: {**sd(f, image_encoder=False),
                                          "scheduler": _sched("DDIMScheduler", set_alpha_to_one=False, steps_offset=1,
                                                              clip_sample=False)},
                               {"prompt": "a photo of a dog", "source_prompt": PROMPT, "image": picture(3)},
                               {"requires_safety_checker": False}, False),
    "StableDiffusionModelEditingPipeline": (lambda f: sd(f, image_encoder=False), {"prompt": PROMPT},
                                            {"requires_safety_checker": False}, False),
    "AltDiffusionPipeline": (alt, {"prompt": PROMPT}, {"requires_safety_checker": False}, True),
    "AltDiffusionImg2ImgPipeline": (alt, {"prompt": PROMPT, "image": picture(4)}, {"requires_safety_checker": False},
                                    True),
    "PaintByExamplePipeline": (paint, {"example_image": picture(5), "image": picture(6), "mask_image": picture(0, "L")},
                               {}, True),
}


def pair(name: str, folder: Path) -> tuple[Any, Any]:
    """``(Diffusers pipeline, difflux pipeline)`` on the same weights."""
    import difflux
    import difflux_sd_variants
    import diffusers

    build, _, config, in_memory = CASES[name]
    components = build(folder)
    if in_memory:
        ref = getattr(diffusers.pipelines.deprecated, name)(**components, **config)
        ref.save_pretrained(folder / name)  # difflux still loads the published folder layout
    else:
        ref = getattr(diffusers, name)(**components, **config)
        ref.save_pretrained(folder / name)
    ours = difflux.DiffusionPipeline.from_pretrained(folder / name)
    if type(ours) is not getattr(difflux_sd_variants, name):
        raise RuntimeError(f"{name}: difflux loaded {type(ours).__name__}")
    for pipe in (ref, ours):
        pipe.set_progress_bar_config(disable=True)
    return ref, ours


def compare(name: str, steps: int, repeat: int) -> tuple[float, float, float]:
    """``(diffusers seconds, difflux seconds, max |difference| of the np outputs)``, medians over ``repeat``."""
    with tempfile.TemporaryDirectory() as tmp:
        ref, ours = pair(name, Path(tmp))
        kwargs = {"num_inference_steps": steps, **CASES[name][1], "output_type": "np"}
        if name.startswith("LatentConsistency"):
            kwargs["num_inference_steps"] = min(steps, 4)
        outputs = {}
        times: dict[str, list[float]] = {"ref": [], "ours": []}
        for key, pipe in (("ref", ref), ("ours", ours)):  # warm-up
            outputs[key] = pipe(**kwargs, generator=torch.Generator().manual_seed(0))
        for _ in range(repeat):
            for key, pipe in (("ref", ref), ("ours", ours)):
                start = time.perf_counter()
                pipe(**kwargs, generator=torch.Generator().manual_seed(0))
                times[key].append(time.perf_counter() - start)

        def array(out: Any) -> np.ndarray:
            return np.asarray(out.rgb if hasattr(out, "rgb") else out.images)

        diff = float(np.abs(array(outputs["ref"]) - array(outputs["ours"])).max())
        return statistics.median(times["ref"]), statistics.median(times["ours"]), diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CASES), default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"{'pipeline':42s} {'diffusers s':>11s} {'difflux s':>10s} {'ratio':>6s} {'max diff':>9s}")
    for name in [args.only] if args.only else list(CASES):
        theirs, ours, diff = compare(name, args.steps, args.repeat)
        print(f"{name:42s} {theirs:11.3f} {ours:10.3f} {ours / theirs:6.2f} {diff:9.2e}")


if __name__ == "__main__":
    main()
