"""StableDiffusionGLIGENPipeline and StableDiffusionGLIGENTextImagePipeline against Diffusers."""

from __future__ import annotations

from typing import Any

import PIL.Image
import pytest
import torch

PROMPT = "a cat and a dog"
BOXES = [[0.1, 0.2, 0.5, 0.8], [0.55, 0.1, 0.95, 0.6]]
KW: dict[str, Any] = {"prompt": PROMPT, "gligen_boxes": BOXES, "num_inference_steps": 3}


def test_loads_with_diffusers_layout(gligen_pair: Any, gligen_image_pair: Any) -> None:
    from difflux_models import CLIPImageProjection
    from difflux_sd_guidance import StableDiffusionGLIGENPipeline, StableDiffusionGLIGENTextImagePipeline

    assert type(gligen_pair[1]) is StableDiffusionGLIGENPipeline
    ours = gligen_image_pair[1]
    assert type(ours) is StableDiffusionGLIGENTextImagePipeline
    assert isinstance(ours.image_project, CLIPImageProjection)
    assert type(ours.processor).__name__ == "CLIPProcessor"
    for r, o in (gligen_pair, gligen_image_pair):
        assert o.model_cpu_offload_seq == r.model_cpu_offload_seq
        assert set(o._optional_components) == set(r._optional_components)


@pytest.mark.parametrize(
    "options",
    [{}, {"guidance_scale": 1.0, "gligen_scheduled_sampling_beta": 1.0}, {"gligen_scheduled_sampling_beta": 0.0}],
    ids=["cfg-beta0.3", "no-cfg-all-steps", "never-grounded"],
)
def test_text_box_parity(g: Any, gligen_pair: Any, options: dict[str, Any]) -> None:
    ref, ours = gligen_pair
    g.compare(ref, ours, gligen_phrases=["a cat", "a dog"], **{**KW, **options})


def test_grounding_changes_the_image_and_the_fusers_come_back_on(g: Any, gligen_pair: Any) -> None:
    _, ours = gligen_pair
    kw = {**KW, "gligen_phrases": ["a cat", "a dog"], "output_type": "latent"}
    grounded = ours(**kw, gligen_scheduled_sampling_beta=1.0, generator=g.gen(0)).images
    plain = ours(**kw, gligen_scheduled_sampling_beta=0.0, generator=g.gen(0)).images
    assert (grounded - plain).abs().max() > 1e-3
    assert all(m.enabled for m in ours.unet.modules() if type(m).__name__ == "GatedSelfAttentionDense")


def test_box_inpainting_parity(g: Any, tmp_path: Any) -> None:
    folder = tmp_path
    components = g.diffusers_sd_components(folder, attention_type="gated", in_channels=9)
    g.open_gates(components["unet"])
    ref = g.diffusers_pipeline("StableDiffusionGLIGENPipeline", components, requires_safety_checker=False)
    ref.save_pretrained(folder / "saved")
    ours = g.load_difflux(folder / "saved")
    kw = {**KW, "gligen_phrases": ["a cat", "a dog"], "gligen_inpaint_image": g.image_input(2, size=40)}
    out = []
    for pipe in (ref, ours):
        torch.manual_seed(7)  # the image encoding and the per-step noise draw from the global generator
        out.append(pipe(**kw, generator=g.gen(0), output_type="latent").images)
    assert g.max_diff(*out) <= g.LATENT_TOL


@pytest.mark.parametrize(
    "options",
    [
        {"gligen_phrases": ["a cat", None], "gligen_images": [None, "image"]},
        {"gligen_phrases": ["a cat", "a dog"], "input_phrases_mask": [1, 0], "guidance_scale": 1.0},
    ],
    ids=["phrase-and-image", "masked-no-cfg"],
)
def test_text_image_parity(g: Any, gligen_image_pair: Any, options: dict[str, Any]) -> None:
    ref, ours = gligen_image_pair
    if "gligen_images" in options:
        options = {**options, "gligen_images": [None, g.image_input(3)]}
    g.compare(ref, ours, pixels=False, **{**KW, **options})


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"gligen_boxes": None}, ValueError, "gligen_boxes"),
        ({"gligen_boxes": [[0.1, 0.2, 1.5, 0.8], [0, 0, 1, 1]]}, ValueError, r"in \[0, 1\]"),
        ({"gligen_phrases": ["a cat"]}, ValueError, "one phrase per box"),
        ({"gligen_phrases": None}, ValueError, "gligen_phrases"),
        ({"gligen_scheduled_sampling_beta": 2.0}, ValueError, "gligen_scheduled_sampling_beta"),
        ({"gligen_inpaint_image": "x.png"}, TypeError, "PIL image"),
        ({"gligen_inpaint_image": PIL.Image.new("RGB", (32, 32))}, ValueError, "inpainting UNet"),
    ],
)
def test_bad_input(gligen_pair: Any, bad: dict[str, Any], error: type[Exception], match: str) -> None:
    _, ours = gligen_pair
    with pytest.raises(error, match=match):
        ours(**{**KW, "gligen_phrases": ["a cat", "a dog"], **bad})


def test_a_plain_unet_is_refused(g: Any, sag_pair: Any, gligen_image_pair: Any) -> None:
    from difflux_sd_guidance import StableDiffusionGLIGENPipeline

    plain = StableDiffusionGLIGENPipeline(**{k: v for k, v in sag_pair[1].components.items() if k != "image_encoder"})
    with pytest.raises(ValueError, match="attention_type='gated'"):
        plain(**KW, gligen_phrases=["a cat", "a dog"])
    with pytest.raises(ValueError, match="gligen_phrases and/or gligen_images"):
        gligen_image_pair[1](**KW)


def test_saved_text_image_folder_loads_in_diffusers(g: Any, gligen_image_pair: Any, tmp_path: Any) -> None:
    import diffusers

    _, ours = gligen_image_pair
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.StableDiffusionGLIGENTextImagePipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    kw = {**KW, "gligen_phrases": ["a cat", "a dog"], "output_type": "latent"}
    a = back(**kw, generator=g.gen(2)).images
    b = ours(**kw, generator=g.gen(2)).images
    assert g.max_diff(a, b) <= g.LATENT_TOL
