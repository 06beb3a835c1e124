"""ControlNetUnionModel and the SDXL Union pipelines against Diffusers: same folder, same seed, same images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import pytest
import torch

PROMPT = "an astronaut on a horse"
TASKS = ("", "Img2Img", "Inpaint")
#: the tiny SDXL ControlNet of the conftest, with a Union head (4 modes, a 1-layer token transformer)
UNION: dict[str, Any] = {"num_control_type": 4, "num_trans_channel": 4, "num_trans_head": 2, "num_proj_channel": 4}


def _union(cn: Any, seed: int) -> Any:
    config = {**cn.SDXL_CONFIG, **UNION}
    torch.manual_seed(seed)
    return cn.randomize(diffusers.ControlNetUnionModel(**config), seed + 100).eval()


def _pipe(library: Any, task: str, components: dict[str, Any]) -> Any:
    pipe = getattr(library, f"StableDiffusionXLControlNetUnion{task}Pipeline")(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def union_pairs(tmp_path_factory: pytest.TempPathFactory, cn: Any) -> dict[tuple[str, str], tuple[Any, Any]]:
    """``{(task, "single" | "multi"): (Diffusers pipeline, difflux's)}``; difflux loads the single txt2img
    one and the multi txt2img one from the folders Diffusers saved; the others share their components."""
    import difflux_controlnet

    folder = tmp_path_factory.mktemp("union")
    nets = [_union(cn, 0), _union(cn, 1)]
    ref = _pipe(diffusers, "", cn.diffusers_sdxl_components(folder, nets[0]))
    ref.save_pretrained(folder / "single")
    multi_ref = _pipe(diffusers, "", {**ref.components, "controlnet": nets})
    multi_ref.save_pretrained(folder / "multi")
    out = {}
    for which, theirs in (("single", ref), ("multi", multi_ref)):
        ours = cn.load_difflux(folder / which)
        for task in TASKS:
            mine = ours if task == "" else _pipe(difflux_controlnet, task, ours.components)
            out[(task, which)] = (theirs if task == "" else _pipe(diffusers, task, theirs.components), mine)
    return out


def _compare(pair: tuple[Any, Any], cn: Any, seed: int, kinds: tuple[str, ...] = ("np",), **kw: Any) -> None:
    ref, ours = pair
    kw = {"prompt": PROMPT, "num_inference_steps": 3, **kw}
    for output_type in kinds:
        tol = 1e-4 if output_type == "latent" else 1 / 255
        a = ref(**kw, generator=cn.gen(seed), output_type=output_type).images
        b = ours(**kw, generator=cn.gen(seed), output_type=output_type).images
        assert cn.max_diff(a, b) <= tol, (output_type, cn.max_diff(a, b))


def test_union_model_gives_diffusers_residuals(cn: Any, tmp_path: Path) -> None:
    from difflux_controlnet import ControlNetUnionModel

    ref = _union(cn, 3)
    ref.save_pretrained(tmp_path / "union")
    ours = ControlNetUnionModel.from_pretrained(tmp_path / "union")
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())  # same keys (the format), any order
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 7, 64, generator=g)
    added = {"text_embeds": torch.randn(3, 32, generator=g), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 3)}
    conds = [torch.rand(3, 3, 32, 32, generator=g) for _ in range(2)]
    for modes, scale, multi, guess in (([1, 3], [0.5, 1.5], False, False), ([2], [0.7], False, True),
                                       ([0], [1.2], True, False)):  # fmt: skip
        kind = ours.control_type(modes, 3)
        kw = {"conditioning_scale": scale, "added_cond_kwargs": added, "from_multi": multi, "guess_mode": guess,
              "return_dict": False}  # fmt: skip
        with torch.no_grad():
            a = ref(x, 500, text, conds[: len(modes)], kind, modes, **kw)
            b = ours(x, 500, text, conds[: len(modes)], kind, modes, **kw)
        for p, q in zip([*a[0], a[1]], [*b[0], b[1]], strict=True):
            assert (p - q).abs().max().item() <= 1e-4 * max(1.0, p.abs().max().item())
        assert a[1].abs().max().item() > 1e-3


@pytest.mark.parametrize(
    "options",
    [
        {"control_image": "one", "control_mode": 1, "kinds": ("latent", "np")},
        {"control_image": "two", "control_mode": [0, 2], "controlnet_conditioning_scale": [0.6, 1.2],
         "control_guidance_start": [0.0, 0.3], "control_guidance_end": [0.7, 1.0], "num_inference_steps": 4},
        {"control_image": "two", "control_mode": [3, 1], "guess_mode": True, "guidance_scale": 1.0},
        {"control_image": "one", "control_mode": [2], "control_guidance_end": 0.5, "denoising_end": 0.8,
         "num_inference_steps": 4},
    ],
    ids=["one-mode", "two-modes-windows", "guess-mode", "window-denoising-end"],
)  # fmt: skip
def test_union_txt2img_parity(cn: Any, union_pairs: Any, options: dict[str, Any]) -> None:
    images = {"one": cn.image_input(1), "two": [cn.image_input(1), cn.image_input(2)]}
    _compare(union_pairs[("", "single")], cn, 0, **{**options, "control_image": images[options["control_image"]]})


def test_multi_union_parity_and_folders(cn: Any, union_pairs: Any, tmp_path: Path) -> None:
    from difflux_controlnet import MultiControlNetUnionModel

    pair = union_pairs[("", "multi")]
    assert isinstance(pair[1].controlnet, MultiControlNetUnionModel) and len(pair[1].controlnet.nets) == 2
    kw: dict[str, Any] = {
        "control_image": [cn.image_input(1), cn.image_input(2)],
        "control_mode": [0, 3],
        "controlnet_conditioning_scale": [0.8, 1.2],
        "control_guidance_start": [0.0, 0.5],
    }
    _compare(pair, cn, 3, ("latent",), **kw)
    pair[1].save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir() if p.name.startswith("controlnet")) == [
        "controlnet",
        "controlnet_1",
    ]
    again = cn.load_difflux(tmp_path / "saved")
    assert isinstance(again.controlnet, MultiControlNetUnionModel) and len(again.controlnet.nets) == 2
    _compare((pair[0], again), cn, 4, **kw, num_inference_steps=2)


@pytest.mark.parametrize("which", ["single", "multi"])
def test_union_img2img_parity(cn: Any, union_pairs: Any, which: str) -> None:
    control = [cn.image_input(1), cn.image_input(2)]
    modes = [1, 2] if which == "single" else [2, 0]
    _compare(union_pairs[("Img2Img", which)], cn, 1, image=cn.image_input(7), control_image=control,
             control_mode=modes, strength=0.7, num_inference_steps=4)  # fmt: skip


@pytest.mark.parametrize("which", ["single", "multi"])
def test_union_inpaint_parity(cn: Any, union_pairs: Any, which: str) -> None:
    control: Any = cn.image_input(1) if which == "single" else [cn.image_input(1), cn.image_input(2)]
    modes: Any = 3 if which == "single" else [3, 1]
    _compare(union_pairs[("Inpaint", which)], cn, 2, image=cn.image_input(7), mask_image=cn.mask_input(),
             control_image=control, control_mode=modes, num_inference_steps=3, strength=0.9)  # fmt: skip


def test_union_guess_mode_with_guidance_runs_the_conditional_half(cn: Any, union_pairs: Any) -> None:
    """Diffusers 0.42.1 stacks the control-type vector for the doubled batch and fails here; difflux gives the
    net the conditional half only and the unconditional half zero residuals, as for a plain ControlNet."""
    ours = union_pairs[("", "single")][1]
    seen: list[int] = []
    hook = ours.controlnet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        out = ours(PROMPT, control_image=cn.image_input(1), control_mode=1, guess_mode=True, guidance_scale=4.0,
                   num_inference_steps=2, output_type="latent", generator=cn.gen(0)).images  # fmt: skip
    finally:
        hook.remove()
    assert seen == [1, 1] and torch.isfinite(out).all()


def test_union_pipelines_declare_what_diffusers_does(union_pairs: Any) -> None:
    for task in TASKS:
        ours, theirs = type(union_pairs[(task, "single")][1]), getattr(
            diffusers, f"StableDiffusionXLControlNetUnion{task}Pipeline"
        )
        assert ours.model_cpu_offload_seq == theirs.model_cpu_offload_seq
        assert set(ours._optional_components) == set(theirs._optional_components)
        assert set(ours._callback_tensor_inputs) == set(theirs._callback_tensor_inputs)


def test_union_pipeline_refuses_a_plain_controlnet(cn: Any, union_pairs: Any) -> None:
    from difflux_controlnet import ControlNetModel, StableDiffusionXLControlNetUnionPipeline

    parts = dict(union_pairs[("", "single")][1].components)
    parts["controlnet"] = ControlNetModel(**cn.SDXL_CONFIG)
    with pytest.raises(TypeError, match="take ControlNetUnionModel"):
        StableDiffusionXLControlNetUnionPipeline(**parts)


@pytest.mark.parametrize(
    ("which", "task", "kw", "error", "match"),
    [
        ("single", "", {"control_mode": None}, ValueError, "needs control_mode="),
        ("single", "", {"control_mode": "depth"}, TypeError, "control_mode must be an int"),
        ("single", "", {"control_mode": True}, TypeError, "control_mode must be an int"),
        ("single", "", {"control_mode": 4}, ValueError, "out of range.*0..3"),
        ("single", "", {"control_mode": [0, 1]}, TypeError, "one condition image per control mode"),
        ("single", "", {"control_image": None}, ValueError, "needs control_image="),
        ("single", "Img2Img", {"controlnet_conditioning_scale": [1.0, 2.0]}, ValueError, "list of 1 numbers"),
        ("single", "Inpaint", {"control_guidance_start": [0.0, 0.1]}, ValueError, "2 entries for 1 control modes"),
        ("multi", "", {"control_mode": [0]}, ValueError, "1 entries for 2 Union ControlNets"),
        ("multi", "Img2Img", {"control_mode": [0, 9]}, ValueError, "out of range"),
        ("multi", "Inpaint", {"control_image": [None, None]}, TypeError, "control_image\\[0\\] must be"),
    ],
)
def test_union_bad_input_fails_before_any_model_runs(
    cn: Any, union_pairs: Any, which: str, task: str, kw: dict[str, Any], error: type, match: str
) -> None:
    pipe = union_pairs[(task, which)][1]
    ran: list[str] = []
    hooks = [
        getattr(pipe, n).register_forward_pre_hook(lambda *_a, _n=n: ran.append(_n))
        for n in ("text_encoder", "text_encoder_2", "unet", "controlnet", "vae")
    ]
    multi = which == "multi"
    base: dict[str, Any] = {
        "prompt": PROMPT,
        "num_inference_steps": 2,
        "control_image": [cn.image_input(1), cn.image_input(2)] if multi else cn.image_input(1),
        "control_mode": [0, 1] if multi else 1,
    }
    if task:
        base["image"] = cn.image_input(7)
    if task == "Inpaint":
        base["mask_image"] = cn.mask_input()
    try:
        with pytest.raises(error, match=match):
            pipe(**{**base, **kw})
    finally:
        for h in hooks:
            h.remove()
    assert ran == []


def test_union_from_unet_copies_the_encoder_and_adds_nothing_until_trained(cn: Any, tmp_path: Path) -> None:
    from difflux_controlnet import ControlNetUnionModel
    from difflux_models import UNet2DConditionModel

    parts = cn.diffusers_sdxl_components(tmp_path, None)
    parts["unet"].save_pretrained(tmp_path / "unet")
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    union = ControlNetUnionModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    assert union.config.num_trans_channel == union.config.num_proj_channel == 4 and union.config.num_trans_head == 4
    for name, value in unet.down_blocks.state_dict().items():
        assert torch.equal(union.down_blocks.state_dict()[name], value)
    g = torch.Generator().manual_seed(0)
    kw = {"added_cond_kwargs": {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.ones(2, 6)}}
    down, mid = union(torch.randn(2, 4, 16, 16, generator=g), 10, torch.randn(2, 7, 64, generator=g),
                      [torch.rand(2, 3, 32, 32, generator=g)], union.control_type([1], 2), [1], return_dict=False,
                      **kw)  # fmt: skip
    assert all(d.abs().max() == 0 for d in down) and mid.abs().max() == 0  # zero convolutions
    with pytest.raises(ValueError, match="multiple of num_trans_head"):
        ControlNetUnionModel(**{**cn.SDXL_CONFIG, **UNION, "num_trans_head": 3})
