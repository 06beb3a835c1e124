"""StableDiffusionControlNetInpaintPipeline against Diffusers: same folder, same seed, same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import pytest

PROMPT = "a photo of a cat on the red horse"


@pytest.fixture(scope="module")
def inpaint_pairs(sd_controlnet_pairs: dict[str, tuple[Any, Any]], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``{"single" | "multi" | "loaded9": (Diffusers inpaint pipeline, difflux's)}``; "loaded9" has a
    9-channel inpainting UNet and is loaded by difflux from the folder Diffusers saved."""
    from difflux_controlnet import StableDiffusionControlNetInpaintPipeline

    out = {}
    for name, (ref, ours) in sd_controlnet_pairs.items():
        ref2 = diffusers.StableDiffusionControlNetInpaintPipeline(**ref.components)
        ref2.set_progress_bar_config(disable=True)
        ours2 = StableDiffusionControlNetInpaintPipeline(**ours.components, requires_safety_checker=False)
        ours2.set_progress_bar_config(disable=True)
        out[name] = (ref2, ours2)
    ref = out["single"][0]
    folder = tmp_path_factory.mktemp("cn-inpaint") / "saved"
    ref9 = diffusers.StableDiffusionControlNetInpaintPipeline(
        **{**ref.components, "unet": _unet9(ref.unet)}, requires_safety_checker=False
    )
    ref9.set_progress_bar_config(disable=True)
    ref9.save_pretrained(folder)
    import difflux

    ours9 = difflux.DiffusionPipeline.from_pretrained(folder)
    ours9.set_progress_bar_config(disable=True)
    out["loaded9"] = (ref9, ours9)
    return out


def _unet9(unet: Any) -> Any:
    """A 9-input-channel copy of ``unet``'s layout with seeded weights (an inpainting UNet)."""
    import torch

    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    config["in_channels"] = 9
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(**config)


@pytest.mark.parametrize(
    ("which", "options", "latent"),
    [
        ("single", {}, True),
        ("single", {"strength": 0.75, "guess_mode": True, "guidance_scale": 3.0}, False),
        (
            "multi",
            {"controlnet_conditioning_scale": [0.6, 1.1], "control_guidance_start": [0.0, 0.5], "strength": 0.9},
            True,
        ),
        ("loaded9", {"strength": 0.8, "control_guidance_end": 0.6}, False),
    ],
    ids=["single", "guess-mode", "multi-window", "9-channel-loaded"],
)
def test_inpaint_parity(cn: Any, inpaint_pairs: Any, which: str, options: dict[str, Any], latent: bool) -> None:
    ref, ours = inpaint_pairs[which]
    if which == "loaded9":
        assert type(ours).__name__ == "StableDiffusionControlNetInpaintPipeline"
        assert ours.unet.config.in_channels == 9
    control = [cn.image_input(1), cn.image_input(2)] if which == "multi" else cn.image_input(1)
    kw: dict[str, Any] = {
        "prompt": PROMPT,
        "image": cn.image_input(7),
        "mask_image": cn.mask_input(),
        "control_image": control,
        "num_inference_steps": 4,
        **options,
    }
    kinds = (("latent", 1e-4), ("np", 1 / 255)) if latent else (("np", 1 / 255),)
    for output_type, tol in kinds:
        a = ref(**kw, generator=cn.gen(2), output_type=output_type).images
        b = ours(**kw, generator=cn.gen(2), output_type=output_type).images
        assert cn.max_diff(a, b) <= tol, (output_type, cn.max_diff(a, b))


def test_inpaint_declares_what_diffusers_does(inpaint_pairs: Any) -> None:
    ours = type(inpaint_pairs["single"][1])
    theirs = diffusers.StableDiffusionControlNetInpaintPipeline
    assert ours.model_cpu_offload_seq == theirs.model_cpu_offload_seq
    assert set(ours._optional_components) == set(theirs._optional_components)
    assert set(ours._callback_tensor_inputs) == set(theirs._callback_tensor_inputs)


def test_inpaint_callback_sees_and_replaces_the_control_image(cn: Any, inpaint_pairs: Any) -> None:
    import torch

    ours = inpaint_pairs["single"][1]
    seen: list[tuple[int, ...]] = []

    def on_step(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(tuple(tensors["control_image"].shape))
        return {"control_image": torch.zeros_like(tensors["control_image"])}

    kw: dict[str, Any] = {"image": cn.image_input(7), "mask_image": cn.mask_input(), "num_inference_steps": 3}
    zeroed = ours(PROMPT, control_image=cn.image_input(1), generator=cn.gen(0), output_type="latent",
                  callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["control_image"], **kw).images
    assert seen == [(2, 3, 32, 32)] * 3
    plain = ours(PROMPT, control_image=cn.image_input(1), generator=cn.gen(0), output_type="latent", **kw).images
    assert cn.max_diff(zeroed, plain) > 1e-3  # from step 2 on the net saw the replaced (black) condition


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"control_image": None}, ValueError, "needs control_image="),
        ({"control_image": "edges.png"}, TypeError, "control_image must be a PIL image"),
        ({"mask_image": None}, ValueError, "mask_image"),
        ({"image": None}, ValueError, "needs image="),
        ({"strength": 0.0}, ValueError, "strength"),
        ({"controlnet_conditioning_scale": [0.5, 0.5]}, ValueError, "controlnet_conditioning_scale"),
        ({"control_guidance_start": -0.1}, ValueError, "0 <= start < end <= 1"),
        ({"guess_mode": None}, TypeError, "guess_mode must be True or False"),
    ],
)
def test_inpaint_bad_input_fails_before_any_model_runs(
    cn: Any, inpaint_pairs: Any, kw: dict[str, Any], error: type, match: str, tmp_path: Path
) -> None:
    pipe = inpaint_pairs["single"][1]
    ran: list[str] = []
    hooks = [
        getattr(pipe, n).register_forward_pre_hook(lambda *_a, _n=n: ran.append(_n))
        for n in ("text_encoder", "unet", "controlnet", "vae")
    ]
    base = {"prompt": PROMPT, "image": cn.image_input(7), "mask_image": cn.mask_input(),
            "control_image": cn.image_input(1), "num_inference_steps": 2}  # fmt: skip
    try:
        with pytest.raises(error, match=match):
            pipe(**{**base, **kw})
    finally:
        for h in hooks:
            h.remove()
    assert ran == []
