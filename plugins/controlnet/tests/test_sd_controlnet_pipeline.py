"""StableDiffusionControlNetPipeline against Diffusers: same folder, same seed, same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch

PROMPT = "a photo of a cat on the red horse"
PIXEL_TOL = 1 / 255
LATENT_TOL = 1e-4


def _compare(ref: Any, ours: Any, cn: Any, seed: int = 0, *, latent: bool = False, **kw: Any) -> None:
    """Images within 1/255 (and, with ``latent``, the final latents within 1e-4)."""
    kw = {"prompt": PROMPT, "num_inference_steps": 3, **kw}
    kinds = (("latent", LATENT_TOL), ("np", PIXEL_TOL)) if latent else (("np", PIXEL_TOL),)
    for output_type, tol in kinds:
        a = ref(**kw, generator=cn.gen(seed), output_type=output_type).images
        b = ours(**kw, generator=cn.gen(seed), output_type=output_type).images
        assert cn.max_diff(a, b) <= tol, (output_type, cn.max_diff(a, b))


def test_loads_as_the_controlnet_pipeline(sd_controlnet_pairs: dict[str, tuple[Any, Any]]) -> None:
    from difflux_controlnet import ControlNetModel, MultiControlNetModel, StableDiffusionControlNetPipeline

    single, multi = sd_controlnet_pairs["single"][1], sd_controlnet_pairs["multi"][1]
    assert type(single) is StableDiffusionControlNetPipeline
    assert isinstance(single.controlnet, ControlNetModel)
    assert isinstance(multi.controlnet, MultiControlNetModel) and len(multi.controlnet.nets) == 2
    assert single.model_cpu_offload_seq == diffusers.StableDiffusionControlNetPipeline.model_cpu_offload_seq
    assert set(single._optional_components) == set(diffusers.StableDiffusionControlNetPipeline._optional_components)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"controlnet_conditioning_scale": 0.5, "guidance_scale": 1.0},
        {"guess_mode": True, "guidance_scale": 4.0},
        {"control_guidance_start": 0.3, "control_guidance_end": 0.7, "num_inference_steps": 4},
    ],
    ids=["cfg", "no-cfg-scale", "guess-mode", "window"],
)
def test_single_controlnet_parity(
    cn: Any, sd_controlnet_pairs: dict[str, tuple[Any, Any]], options: dict[str, Any]
) -> None:
    ref, ours = sd_controlnet_pairs["single"]
    _compare(ref, ours, cn, image=cn.image_input(1), **options)


def test_multi_controlnet_parity(cn: Any, sd_controlnet_pairs: dict[str, tuple[Any, Any]]) -> None:
    ref, ours = sd_controlnet_pairs["multi"]
    kw: dict[str, Any] = {
        "image": [cn.image_input(1), cn.image_input(2)],
        "controlnet_conditioning_scale": [0.7, 1.3],
        "control_guidance_start": [0.0, 0.25],
        "control_guidance_end": [0.75, 1.0],
        "num_inference_steps": 4,
        "negative_prompt": "blurry",
    }
    _compare(ref, ours, cn, seed=3, latent=True, **kw)
    _compare(ref, ours, cn, seed=4, guess_mode=True, guidance_scale=3.0, **kw)


def test_batches_tensors_and_generator_lists(cn: Any, sd_controlnet_pairs: dict[str, tuple[Any, Any]]) -> None:
    ref, ours = sd_controlnet_pairs["single"]
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))  # one per prompt, [0, 1]
    kw: dict[str, Any] = {
        "prompt": [PROMPT, "a dog"],
        "image": image,
        "num_images_per_prompt": 2,
        "num_inference_steps": 2,
        "output_type": "np",
    }
    a = ref(**kw, generator=[cn.gen(i) for i in range(4)]).images
    b = ours(**kw, generator=[cn.gen(i) for i in range(4)]).images
    assert a.shape == (4, 32, 32, 3)
    assert cn.max_diff(a, b) <= PIXEL_TOL
    # one image per generator, reproducible alone
    alone = ours(
        **{**kw, "prompt": "a dog", "image": image[1:], "num_images_per_prompt": 1}, generator=[cn.gen(3)]
    ).images
    assert cn.max_diff(alone[0], b[3]) <= PIXEL_TOL


def test_difflux_saved_multi_pipeline_loads_in_diffusers(
    cn: Any, sd_controlnet_pairs: dict[str, tuple[Any, Any]], tmp_path: Path
) -> None:
    ours = sd_controlnet_pairs["multi"][1]
    ours.save_pretrained(tmp_path / "saved")
    names = sorted(p.name for p in (tmp_path / "saved").iterdir() if p.name.startswith("controlnet"))
    assert names == ["controlnet", "controlnet_1"]
    back = diffusers.StableDiffusionControlNetPipeline.from_pretrained(tmp_path / "saved")
    back.set_progress_bar_config(disable=True)
    assert isinstance(back.controlnet, diffusers.models.controlnets.MultiControlNetModel)
    kw: dict[str, Any] = {"image": [cn.image_input(1), cn.image_input(2)], "num_inference_steps": 2}
    _compare(back, ours, cn, seed=6, **kw)
    again = cn.load_difflux(tmp_path / "saved")
    assert len(again.controlnet.nets) == 2


def test_controlnet_list_is_wrapped_and_callback_sees_the_image(
    cn: Any, sd_controlnet_pairs: dict[str, tuple[Any, Any]]
) -> None:
    from difflux_controlnet import MultiControlNetModel, StableDiffusionControlNetPipeline

    ours = sd_controlnet_pairs["single"][1]
    parts = {k: v for k, v in ours.components.items()}
    parts["controlnet"] = [ours.controlnet, ours.controlnet]
    pipe = StableDiffusionControlNetPipeline(**parts, requires_safety_checker=False)
    assert isinstance(pipe.controlnet, MultiControlNetModel)
    seen: list[tuple[int, ...]] = []

    def on_step(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(tuple(tensors["image"].shape))
        return tensors

    ours(
        PROMPT,
        image=cn.image_input(1),
        num_inference_steps=2,
        output_type="latent",
        callback_on_step_end=on_step,
        callback_on_step_end_tensor_inputs=["latents", "image"],
    )
    assert seen == [(2, 3, 32, 32)] * 2  # doubled for classifier-free guidance, as Diffusers hands it over


@pytest.mark.parametrize(
    ("which", "kw", "error", "match"),
    [
        ("single", {"image": None}, ValueError, "needs image="),
        ("single", {"image": "cat.png"}, TypeError, "image must be a PIL image"),
        ("single", {"image": [object()]}, TypeError, "image must be a PIL image"),
        ("single", {"image": "three"}, TypeError, "image must be"),
        ("multi", {"image": "one"}, TypeError, "one condition image per ControlNet"),
        ("multi", {"image": ["a"]}, ValueError, "1 condition images for 2 ControlNets"),
        ("single", {"controlnet_conditioning_scale": "high"}, ValueError, "controlnet_conditioning_scale must be"),
        ("multi", {"controlnet_conditioning_scale": [1.0]}, ValueError, "list of 2 numbers"),
        ("single", {"controlnet_conditioning_scale": float("nan")}, ValueError, "finite number"),
        ("single", {"control_guidance_start": 0.8, "control_guidance_end": 0.2}, ValueError, "0 <= start < end <= 1"),
        ("single", {"control_guidance_end": 1.5}, ValueError, "0 <= start < end <= 1"),
        ("single", {"control_guidance_start": [0.1, 0.2]}, ValueError, "2 entries for 1 ControlNets"),
        ("multi", {"control_guidance_start": [0.1, 0.2], "control_guidance_end": [0.9]}, ValueError, "same length"),
        ("single", {"control_guidance_start": "early"}, ValueError, "must be numbers"),
        ("single", {"guess_mode": "yes"}, TypeError, "guess_mode must be True or False"),
    ],
)
def test_bad_control_arguments_fail_before_any_model_runs(
    cn: Any, sd_controlnet_pairs: dict[str, tuple[Any, Any]], which: str, kw: dict[str, Any], error: type, match: str
) -> None:
    pipe = sd_controlnet_pairs[which][1]
    ran: list[str] = []
    hooks = [
        getattr(pipe, name).register_forward_pre_hook(lambda *_a, _n=name: ran.append(_n))
        for name in ("text_encoder", "unet", "controlnet", "vae")
    ]
    image: Any = cn.image_input(1) if which == "single" else [cn.image_input(1), cn.image_input(2)]
    if kw.get("image") == ["a"]:
        kw = {"image": [cn.image_input(1)]}
    elif kw.get("image") == "three":
        kw = {"image": [cn.image_input(1)] * 3}
        match = "3 condition images for 1 prompts"
        error = ValueError
    try:
        with pytest.raises(error, match=match):
            pipe(**{"prompt": PROMPT, "image": image, "num_inference_steps": 2, **kw})
    finally:
        for h in hooks:
            h.remove()
    assert ran == []
