"""PaintByExamplePipeline and its exemplar encoder against Diffusers' in-memory pipeline.

Diffusers 0.42.1 cannot reload a Paint by Example folder (PaintByExampleImageEncoder is not exported at its top
level), so the reference runs in memory; difflux loads the folder Diffusers saved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch


def diffusers_encoder(seed: int = 0) -> Any:
    from diffusers.pipelines.deprecated.paint_by_example.image_encoder import PaintByExampleImageEncoder
    from transformers import CLIPVisionConfig

    config = CLIPVisionConfig(hidden_size=32, projection_dim=32, intermediate_size=37, layer_norm_eps=1e-05,
                              num_attention_heads=4, num_hidden_layers=5, image_size=32, patch_size=4)
    torch.manual_seed(seed)
    return PaintByExampleImageEncoder(config, proj_size=32).eval()


@pytest.fixture(scope="module")
def pbe(sv: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    from diffusers.pipelines.deprecated.paint_by_example import PaintByExamplePipeline
    from transformers import CLIPImageProcessor

    folder = tmp_path_factory.mktemp("pbe")
    base = sv.sd_components(folder, "PNDMScheduler", in_channels=9)
    scheduler = sv.scheduler("PNDMScheduler", skip_prk_steps=True)
    components = {"vae": base["vae"], "unet": base["unet"], "scheduler": scheduler,
                  "image_encoder": diffusers_encoder(), "safety_checker": None,
                  "feature_extractor": CLIPImageProcessor(crop_size=32, size=32)}
    ref = PaintByExamplePipeline(**components)
    ref.set_progress_bar_config(disable=True)
    ref.save_pretrained(folder / "pbe")
    return ref, sv.load_difflux(folder / "pbe"), folder / "pbe"


@pytest.mark.parametrize("options", [{"output_type": "np"}, pytest.param(
    {"guidance_scale": 1.0, "num_images_per_prompt": 2, "output_type": "latent"}, marks=pytest.mark.slow)])
def test_paint_by_example_parity(sv: Any, pbe: Any, options: dict[str, Any]) -> None:
    ref, ours, _ = pbe
    kw = {"example_image": sv.image_input(8), "image": sv.image_input(9), "mask_image": sv.mask_input(),
          "num_inference_steps": 3, **options}
    a, b = ref(**kw, generator=sv.gen(0)).images, ours(**kw, generator=sv.gen(0)).images
    assert sv.max_diff(a, b) <= (sv.LATENT_TOL if options["output_type"] == "latent" else sv.PIXEL_TOL)


def test_paint_by_example_encoder_and_layouts(sv: Any, pbe: Any, tmp_path: Path) -> None:
    """The encoder loaded from Diffusers' weights gives its embeddings; both folder layouts load."""
    ref, ours, folder = pbe
    assert type(ours).__name__ == "PaintByExamplePipeline"
    assert type(ours.image_encoder).__module__ == "difflux_sd_variants.paint_by_example_encoder"
    pixels = torch.randn(2, 3, 32, 32, generator=sv.gen(3))
    with torch.no_grad():
        a, ua = ref.image_encoder(pixels, return_uncond_vector=True)
        b, ub = ours.image_encoder(pixels, return_uncond_vector=True)
    assert b.shape == (2, 1, 32) and sv.max_diff(a, b) <= 1e-5 and sv.max_diff(ua, ub) == 0
    index = json.loads((folder / "model_index.json").read_text())
    published = shutil.copytree(folder, tmp_path / "published")
    index["image_encoder"] = ["paint_by_example", "PaintByExampleImageEncoder"]
    (published / "model_index.json").write_text(json.dumps(index))
    assert type(sv.load_difflux(published).image_encoder).__name__ == "PaintByExampleImageEncoder"


@pytest.mark.parametrize(
    ("bad", "match"),
    [({"example_image": None}, "example_image"), ({"mask_image": None}, "mask_image"),
     ({"image": "x.png"}, "image"), ({"num_inference_steps": 0}, "num_inference_steps")],
)
def test_paint_by_example_bad_input(sv: Any, pbe: Any, bad: dict[str, Any], match: str) -> None:
    _, ours, _ = pbe
    kw = {"example_image": sv.image_input(8), "image": sv.image_input(9), "mask_image": sv.mask_input(),
          "num_inference_steps": 2, **bad}
    with pytest.raises((ValueError, TypeError), match=match):
        ours(**kw)
