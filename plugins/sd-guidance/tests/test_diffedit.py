"""StableDiffusionDiffEditPipeline against Diffusers: the mask, the inversion and the edit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

SOURCE, TARGET = "a cat", "a dog"


def test_loads_with_diffusers_layout(diffedit_pair: Any) -> None:
    from difflux_sd_guidance import StableDiffusionDiffEditPipeline

    ref, ours = diffedit_pair
    assert type(ours) is StableDiffusionDiffEditPipeline
    assert type(ours.inverse_scheduler).__name__ == "DDIMInverseScheduler"
    assert ours.model_cpu_offload_seq == ref.model_cpu_offload_seq
    assert set(ours._optional_components) == set(ref._optional_components)


def test_mask_parity(g: Any, diffedit_pair: Any) -> None:
    """Diffusers 0.42.1's generate_mask unpacks encode_prompt's (prompt, negative) the other way round;
    giving it the embeddings swapped makes it guide as the paper does, which is what difflux runs."""
    ref, ours = diffedit_pair
    src, tgt = (ours.encode_prompt(p, guidance=True) for p in (SOURCE, TARGET))
    kw = {"image": g.image_input(1), "num_maps_per_mask": 2, "num_inference_steps": 4, "mask_thresholding_ratio": 1.0}
    a = ref.generate_mask(
        **kw,
        source_prompt_embeds=src.negative,
        source_negative_prompt_embeds=src.embeds,
        target_prompt_embeds=tgt.negative,
        target_negative_prompt_embeds=tgt.embeds,
        generator=g.gen(0),
    )
    b = ours.generate_mask(**kw, source_prompt=SOURCE, target_prompt=TARGET, generator=g.gen(0))
    assert a.shape == b.shape == (1, 16, 16)
    assert np.array_equal(a, b) and 0 < b.mean() < 1  # a real split of the image
    pt = ours.generate_mask(**kw, source_prompt=SOURCE, target_prompt=TARGET, generator=g.gen(0), output_type="pt")
    assert torch.equal(pt.cpu(), torch.from_numpy(b))
    plain = ours.generate_mask(**kw, source_prompt=SOURCE, target_prompt=TARGET, guidance_scale=1.0)
    assert plain.shape == (1, 16, 16) and set(np.unique(plain)) <= {0, 1}  # Diffusers fails without guidance


@pytest.mark.parametrize(
    "options", [{}, {"num_reg_steps": 1, "num_auto_corr_rolls": 2, "inpaint_strength": 0.5}], ids=["plain", "reg"]
)
def test_inversion_and_edit_parity(g: Any, diffedit_pair: Any, options: dict[str, Any]) -> None:
    ref, ours = diffedit_pair
    kw = {"prompt": SOURCE, "image": g.image_input(1), "num_inference_steps": 4, **options}
    a = ref.invert(**kw, generator=g.gen(0)).latents
    b = ours.invert(**kw, generator=g.gen(0)).latents
    assert a.shape == b.shape
    assert g.max_diff(a, b) <= g.LATENT_TOL
    mask = np.zeros((1, 16, 16), dtype=np.float32)
    mask[:, 4:12, 4:12] = 1
    strength = options.get("inpaint_strength", 0.8)
    edit = {"prompt": TARGET, "mask_image": mask, "num_inference_steps": 4, "inpaint_strength": strength}
    g.compare(ref, ours, image_latents=b, **edit)


def test_inversion_decodes_every_step(g: Any, diffedit_pair: Any) -> None:
    _, ours = diffedit_pair
    out = ours.invert(
        prompt=SOURCE,
        image=g.image_input(1),
        num_inference_steps=4,
        decode_latents=True,
        output_type="np",
        generator=g.gen(0),
    )
    assert out.latents.shape == (1, 3, 4, 16, 16) and out.images.shape == (3, 32, 32, 3)


@pytest.mark.parametrize(
    ("call", "bad", "error", "match"),
    [
        ("generate_mask", {"num_maps_per_mask": 0}, ValueError, "num_maps_per_mask"),
        ("generate_mask", {"mask_thresholding_ratio": -1.0}, ValueError, "mask_thresholding_ratio"),
        ("generate_mask", {"mask_encode_strength": 2.0}, ValueError, "strength"),
        ("generate_mask", {"source_prompt": None}, ValueError, "prompt"),
        ("invert", {"image": None}, ValueError, "image"),
        ("invert", {"num_reg_steps": -1}, ValueError, "num_reg_steps"),
        ("__call__", {"mask_image": None}, ValueError, "generate_mask"),
        ("__call__", {"image_latents": None}, ValueError, "invert"),
        ("__call__", {"image_latents": torch.zeros(1, 2, 4, 16, 16)}, ValueError, "from 3 steps"),
        ("__call__", {"mask_image": np.full((16, 16), 2.0)}, ValueError, r"\[0, 1\]"),
    ],
)
def test_bad_input(g: Any, diffedit_pair: Any, call: str, bad: dict[str, Any], error: type, match: str) -> None:
    _, ours = diffedit_pair
    defaults: dict[str, dict[str, Any]] = {
        "generate_mask": {"image": g.image_input(1), "source_prompt": SOURCE, "target_prompt": TARGET},
        "invert": {"prompt": SOURCE, "image": g.image_input(1)},
        "__call__": {
            "prompt": TARGET,
            "mask_image": np.ones((16, 16), dtype=np.float32),
            "image_latents": torch.zeros(1, 3, 4, 16, 16),
            "num_inference_steps": 4,
        },
    }
    with pytest.raises(error, match=match):
        getattr(ours, call)(**{**defaults[call], **bad})
