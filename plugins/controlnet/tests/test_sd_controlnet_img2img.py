"""StableDiffusionControlNetImg2ImgPipeline against Diffusers: same folder, same seed, same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import pytest

PROMPT = "a photo of a cat on the red horse"


@pytest.fixture(scope="module")
def img2img_pairs(sd_controlnet_pairs: dict[str, tuple[Any, Any]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``{"single" | "multi": (Diffusers img2img pipeline, difflux's)}``; the single one loaded from a saved folder."""
    from difflux_controlnet import StableDiffusionControlNetImg2ImgPipeline

    out = {}
    for name, (ref, ours) in sd_controlnet_pairs.items():
        ref2 = diffusers.StableDiffusionControlNetImg2ImgPipeline(**ref.components)
        ref2.set_progress_bar_config(disable=True)
        ours2 = StableDiffusionControlNetImg2ImgPipeline(**ours.components, requires_safety_checker=False)
        ours2.set_progress_bar_config(disable=True)
        out[name] = (ref2, ours2)
    folder = tmp_path_factory.mktemp("img2img") / "saved"
    out["single"][0].save_pretrained(folder)
    out["loaded"] = (out["single"][0], _load(folder))
    return out


def _load(folder: Path) -> Any:
    import difflux

    pipe = difflux.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("which", "options", "latent"),
    [
        ("loaded", {"strength": 0.75}, True),
        ("single", {"strength": 1.0, "guess_mode": True, "guidance_scale": 3.0}, False),
        (
            "multi",
            {"controlnet_conditioning_scale": [0.6, 1.1], "control_guidance_end": [0.5, 1.0], "strength": 0.9},
            True,
        ),
    ],
    ids=["loaded", "guess-mode", "multi-window"],
)
def test_img2img_parity(cn: Any, img2img_pairs: Any, which: str, options: dict[str, Any], latent: bool) -> None:
    ref, ours = img2img_pairs[which]
    if which == "loaded":
        assert type(ours).__name__ == "StableDiffusionControlNetImg2ImgPipeline"
    control = [cn.image_input(1), cn.image_input(2)] if which == "multi" else cn.image_input(1)
    kw: dict[str, Any] = {
        "prompt": PROMPT,
        "image": cn.image_input(7),
        "control_image": control,
        "num_inference_steps": 4,
        **options,
    }
    kinds = (("latent", 1e-4), ("np", 1 / 255)) if latent else (("np", 1 / 255),)
    for output_type, tol in kinds:
        a = ref(**kw, generator=cn.gen(2), output_type=output_type).images
        b = ours(**kw, generator=cn.gen(2), output_type=output_type).images
        assert cn.max_diff(a, b) <= tol, (output_type, cn.max_diff(a, b))


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"control_image": None}, ValueError, "needs control_image="),
        ({"control_image": 3}, TypeError, "control_image must be a PIL image"),
        ({"image": None}, ValueError, "needs image="),
        ({"strength": 1.5}, ValueError, "strength must be a number in"),
        ({"controlnet_conditioning_scale": [1.0, 2.0]}, ValueError, "controlnet_conditioning_scale"),
    ],
)
def test_img2img_bad_input_fails_before_any_model_runs(
    cn: Any, img2img_pairs: Any, kw: dict[str, Any], error: type, match: str
) -> None:
    pipe = img2img_pairs["single"][1]
    ran: list[str] = []
    hooks = [
        getattr(pipe, n).register_forward_pre_hook(lambda *_a, _n=n: ran.append(_n))
        for n in ("text_encoder", "unet", "controlnet", "vae")
    ]
    try:
        with pytest.raises(error, match=match):
            pipe(**{"prompt": PROMPT, "image": cn.image_input(7), "control_image": cn.image_input(1), **kw})
    finally:
        for h in hooks:
            h.remove()
    assert ran == []
