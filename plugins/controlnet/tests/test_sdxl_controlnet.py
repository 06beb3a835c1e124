"""SDXL ControlNet pipelines (text-to-image, img2img, inpainting) against Diffusers: same folder, same seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import pytest

PROMPT = "an astronaut on a horse"
PIXEL_TOL = 1 / 255
LATENT_TOL = 1e-4
TASKS = ("", "Img2Img", "Inpaint")


def _diffusers(task: str, components: dict[str, Any]) -> Any:
    pipe = getattr(diffusers, f"StableDiffusionXLControlNet{task}Pipeline")(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ours(task: str, components: dict[str, Any]) -> Any:
    import difflux_controlnet

    pipe = getattr(difflux_controlnet, f"StableDiffusionXLControlNet{task}Pipeline")(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl_pairs(tmp_path_factory: pytest.TempPathFactory, cn: Any) -> dict[tuple[str, str], tuple[Any, Any]]:
    """``{(task, "single" | "multi"): (Diffusers pipeline, difflux's)}``; the single txt2img one is loaded
    by difflux from the folder Diffusers saved, the others share its components."""
    folder = tmp_path_factory.mktemp("sdxl-controlnet")
    nets = [cn.diffusers_controlnet(0, cn.SDXL_CONFIG), cn.diffusers_controlnet(1, cn.SDXL_CONFIG)]
    base = cn.diffusers_sdxl_components(folder, nets[0])
    ref = _diffusers("", base)
    ref.save_pretrained(folder / "single")
    ours = cn.load_difflux(folder / "single")
    out = {}
    for which in ("single", "multi"):
        theirs = {**ref.components, "controlnet": nets if which == "multi" else nets[0]}
        mine = {**ours.components}
        if which == "multi":
            from difflux_controlnet import ControlNetModel

            mine["controlnet"] = [ours.controlnet, ControlNetModel.from_pretrained(_saved(nets[1], folder / "net1"))]
        for task in TASKS:
            mine_pipe = ours if (task, which) == ("", "single") else _ours(task, mine)
            out[(task, which)] = (_diffusers(task, theirs), mine_pipe)
    return out


def _saved(model: Any, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


def _compare(pair: tuple[Any, Any], cn: Any, seed: int, kinds: tuple[str, ...] = ("np",), **kw: Any) -> None:
    ref, ours = pair
    kw = {"prompt": PROMPT, "num_inference_steps": 3, **kw}
    for output_type in kinds:
        tol = LATENT_TOL if output_type == "latent" else PIXEL_TOL
        a = ref(**kw, generator=cn.gen(seed), output_type=output_type).images
        b = ours(**kw, generator=cn.gen(seed), output_type=output_type).images
        assert cn.max_diff(a, b) <= tol, (output_type, cn.max_diff(a, b))


def test_loads_as_the_sdxl_controlnet_pipeline(sdxl_pairs: Any) -> None:
    from difflux_controlnet import ControlNetModel, StableDiffusionXLControlNetPipeline

    ours = sdxl_pairs[("", "single")][1]
    assert type(ours) is StableDiffusionXLControlNetPipeline
    assert isinstance(ours.controlnet, ControlNetModel)
    assert ours.controlnet.config.addition_embed_type == "text_time"
    for task in TASKS:
        theirs = getattr(diffusers, f"StableDiffusionXLControlNet{task}Pipeline")
        mine = type(sdxl_pairs[(task, "single")][1])
        assert mine.model_cpu_offload_seq == theirs.model_cpu_offload_seq
        assert set(mine._optional_components) == set(theirs._optional_components)
        assert mine.component_names() == tuple(
            n for n in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "controlnet",
                        "scheduler", "feature_extractor", "image_encoder")
        )  # fmt: skip


@pytest.mark.parametrize(
    "options",
    [
        {"kinds": ("latent", "np"), "negative_prompt": "blurry"},
        {"guess_mode": True, "guidance_scale": 3.0, "controlnet_conditioning_scale": 0.7},
        {"control_guidance_start": 0.2, "control_guidance_end": 0.6, "num_inference_steps": 5, "denoising_end": 0.7},
        {"guidance_scale": 1.0, "original_size": (64, 64), "crops_coords_top_left": (4, 8), "target_size": (48, 40)},
    ],
    ids=["cfg", "guess-mode", "window-denoising-end", "no-cfg-sizes"],
)
def test_sdxl_txt2img_parity(cn: Any, sdxl_pairs: Any, options: dict[str, Any]) -> None:
    _compare(sdxl_pairs[("", "single")], cn, 0, image=cn.image_input(1), **options)


def test_sdxl_multi_controlnet_parity(cn: Any, sdxl_pairs: Any) -> None:
    kw: dict[str, Any] = {
        "image": [cn.image_input(1), cn.image_input(2)],
        "controlnet_conditioning_scale": [0.7, 1.3],
        "control_guidance_start": [0.0, 0.25],
        "control_guidance_end": [0.75, 1.0],
        "num_inference_steps": 4,
    }
    _compare(sdxl_pairs[("", "multi")], cn, 3, ("latent",), **kw)
    _compare(sdxl_pairs[("", "multi")], cn, 4, guess_mode=True, **kw)


@pytest.mark.parametrize("which", ["single", "multi"])
def test_sdxl_img2img_parity(cn: Any, sdxl_pairs: Any, which: str) -> None:
    control = [cn.image_input(1), cn.image_input(2)] if which == "multi" else cn.image_input(1)
    extra: dict[str, Any] = (
        {"controlnet_conditioning_scale": [0.5, 1.0], "control_guidance_end": [0.5, 1.0]}
        if which == "multi"
        else {"negative_original_size": (32, 32), "negative_target_size": (16, 16), "aesthetic_score": 5.0}
    )
    _compare(sdxl_pairs[("Img2Img", which)], cn, 1, image=cn.image_input(7), control_image=control, strength=0.7,
             num_inference_steps=4, **extra)  # fmt: skip


@pytest.mark.parametrize(
    ("which", "options"),
    [
        ("single", {"kinds": ("latent", "np")}),
        ("single", {"strength": 0.75, "guess_mode": True, "guidance_rescale": 0.5}),
        ("multi", {"controlnet_conditioning_scale": [0.8, 0.4], "control_guidance_start": [0.0, 0.5]}),
    ],
    ids=["full-strength", "guess-mode-rescale", "multi-window"],
)
def test_sdxl_inpaint_parity(cn: Any, sdxl_pairs: Any, which: str, options: dict[str, Any]) -> None:
    control = [cn.image_input(1), cn.image_input(2)] if which == "multi" else cn.image_input(1)
    _compare(sdxl_pairs[("Inpaint", which)], cn, 2, image=cn.image_input(7), mask_image=cn.mask_input(),
             control_image=control, num_inference_steps=4, **options)  # fmt: skip


def test_sdxl_inpaint_with_a_9_channel_unet(cn: Any, tmp_path: Path) -> None:
    net = cn.diffusers_controlnet(0, cn.SDXL_CONFIG)
    ref = _diffusers("Inpaint", cn.diffusers_sdxl_components(tmp_path, net, in_channels=9))
    ref.save_pretrained(tmp_path / "inpaint9")
    ours = cn.load_difflux(tmp_path / "inpaint9")
    assert type(ours).__name__ == "StableDiffusionXLControlNetInpaintPipeline"
    _compare((ref, ours), cn, 5, image=cn.image_input(7), mask_image=cn.mask_input(), control_image=cn.image_input(3),
             strength=0.8, num_inference_steps=3)  # fmt: skip


def test_sdxl_multi_saves_as_controlnet_and_controlnet_1(cn: Any, sdxl_pairs: Any, tmp_path: Path) -> None:
    ours = sdxl_pairs[("", "multi")][1]
    ours.save_pretrained(tmp_path / "saved")
    names = sorted(p.name for p in (tmp_path / "saved").iterdir() if p.name.startswith("controlnet"))
    assert names == ["controlnet", "controlnet_1"]
    back = diffusers.StableDiffusionXLControlNetPipeline.from_pretrained(tmp_path / "saved")
    back.set_progress_bar_config(disable=True)
    assert isinstance(back.controlnet, diffusers.models.controlnets.MultiControlNetModel)
    kw: dict[str, Any] = {"image": [cn.image_input(1), cn.image_input(2)], "num_inference_steps": 2}
    _compare((back, ours), cn, 6, **kw)
    again = cn.load_difflux(tmp_path / "saved")
    assert type(again).__name__ == "StableDiffusionXLControlNetPipeline" and len(again.controlnet.nets) == 2
    _compare((back, again), cn, 6, **kw)


@pytest.mark.parametrize(
    ("task", "kw", "error", "match"),
    [
        ("", {"image": None}, ValueError, "needs image="),
        ("", {"image": 3}, TypeError, "image must be a PIL image"),
        ("", {"controlnet_conditioning_scale": "x"}, ValueError, "controlnet_conditioning_scale must be"),
        ("", {"control_guidance_start": 0.9, "control_guidance_end": 0.1}, ValueError, "0 <= start < end <= 1"),
        ("", {"guess_mode": 1}, TypeError, "guess_mode must be True or False"),
        ("", {"denoising_end": 2.0}, ValueError, "denoising_end"),
        ("Img2Img", {"control_image": None}, ValueError, "needs control_image="),
        ("Img2Img", {"image": None}, ValueError, "needs image="),
        ("Img2Img", {"strength": -0.5}, ValueError, "strength must be"),
        ("Inpaint", {"mask_image": None}, ValueError, "mask_image"),
        ("Inpaint", {"control_image": [1, 2]}, TypeError, "control_image must be a PIL image"),
        ("Inpaint", {"control_guidance_end": [0.5, 1.0]}, ValueError, "2 entries for 1 ControlNets"),
    ],
)
def test_sdxl_bad_input_fails_before_any_model_runs(
    cn: Any, sdxl_pairs: Any, task: str, kw: dict[str, Any], error: type, match: str
) -> None:
    pipe = sdxl_pairs[(task, "single")][1]
    ran: list[str] = []
    hooks = [
        getattr(pipe, n).register_forward_pre_hook(lambda *_a, _n=n: ran.append(_n))
        for n in ("text_encoder", "text_encoder_2", "unet", "controlnet", "vae")
    ]
    base: dict[str, Any] = {"prompt": PROMPT, "num_inference_steps": 2}
    if task == "":
        base["image"] = cn.image_input(1)
    else:
        base.update(image=cn.image_input(7), control_image=cn.image_input(1))
    if task == "Inpaint":
        base["mask_image"] = cn.mask_input()
    try:
        with pytest.raises(error, match=match):
            pipe(**{**base, **kw})
    finally:
        for h in hooks:
            h.remove()
    assert ran == []
