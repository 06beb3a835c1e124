"""unCLIP against Diffusers 0.42.1 (in-memory oracle: Diffusers cannot reload unCLIP folders)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen, image_input, load_difflux, max_diff

TOL = 1e-4


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"num_images_per_prompt": 2},
        {"prior_guidance_scale": 1.0, "decoder_guidance_scale": 1.0},
        {"prior_guidance_scale": 1.0},
    ],
)
def test_text_to_image_parity(unclip_pipes: dict[str, tuple[Any, Path]], extra: dict[str, Any]) -> None:
    theirs, folder = unclip_pipes["UnCLIPPipeline"]
    ours = load_difflux(folder)
    assert type(ours).__name__ == "UnCLIPPipeline"
    assert json.loads((folder / "model_index.json").read_text())["text_proj"] == ["diffusers", "UnCLIPTextProjModel"]
    args = {
        "prompt": ["a cat", "a red house"],
        "prior_num_inference_steps": 2,
        "decoder_num_inference_steps": 2,
        "super_res_num_inference_steps": 2,
        "output_type": "np",
        **extra,
    }
    a, b = ours(**args, generator=gen(0)).images, theirs(**args, generator=gen(0)).images
    assert a.shape == b.shape == (2 * extra.get("num_images_per_prompt", 1), 32, 32, 3)
    assert max_diff(a, b) <= TOL


@pytest.mark.parametrize("source", ["pil", "embeddings"])
def test_image_variation_parity(unclip_pipes: dict[str, tuple[Any, Path]], source: str) -> None:
    theirs, folder = unclip_pipes["UnCLIPImageVariationPipeline"]
    ours = load_difflux(folder)
    given: dict[str, Any] = (
        {"image": [image_input(0), image_input(1)]}
        if source == "pil"
        else {"image_embeddings": torch.randn(2, 32, generator=gen(3))}
    )
    args = {"decoder_num_inference_steps": 2, "super_res_num_inference_steps": 2, "output_type": "np", **given}
    a, b = ours(**args, generator=gen(0)).images, theirs(**args, generator=gen(0)).images
    assert max_diff(a, b) <= TOL


def test_folder_round_trip(unclip_pipes: dict[str, tuple[Any, Path]], tmp_path: Path) -> None:
    """difflux writes the same layout back: component entries and weights reload equal."""
    _, folder = unclip_pipes["UnCLIPPipeline"]
    ours = load_difflux(folder)
    ours.save_pretrained(tmp_path / "again")
    before = json.loads((folder / "model_index.json").read_text())
    after = json.loads((tmp_path / "again" / "model_index.json").read_text())
    assert {k: v for k, v in after.items() if not k.startswith("_")} == {
        k: v for k, v in before.items() if not k.startswith("_")
    }
    again = load_difflux(tmp_path / "again")
    args = {"prompt": "a cat", "prior_num_inference_steps": 2, "decoder_num_inference_steps": 2,
            "super_res_num_inference_steps": 2, "output_type": "np"}  # fmt: skip
    assert max_diff(ours(**args, generator=gen(1)).images, again(**args, generator=gen(1)).images) == 0.0


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"prompt": None}, "pass prompt"),
        ({"prompt": 3}, "prompt must be a string"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
        ({"decoder_num_inference_steps": 0}, "decoder_num_inference_steps"),
        (
            {"decoder_latents": torch.zeros(1, 3, 8, 8)},
            r"decoder_latents have shape \(1, 3, 8, 8\), expected \(1, 3, 16, 16\)",
        ),
        ({"output_type": "latent"}, "output_type"),
        ({"prior_guidance_scale": "high"}, "prior_guidance_scale must be a number"),
    ],
)
def test_bad_input_is_refused_before_any_model_runs(
    unclip_pipes: dict[str, tuple[Any, Path]], bad: dict[str, Any], match: str
) -> None:
    ours = load_difflux(unclip_pipes["UnCLIPPipeline"][1])
    calls: list[int] = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in (ours.text_encoder, ours.prior)]
    try:
        with pytest.raises((TypeError, ValueError), match=match):
            ours(**{"prompt": "a cat", **bad})
    finally:
        for h in hooks:
            h.remove()
    assert calls == []
