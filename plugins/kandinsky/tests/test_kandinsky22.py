"""Kandinsky 2.2 against Diffusers 0.42.1: every pipeline's output on the same folder, seed and inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difflux_stable_diffusion.testing import gen, image_input, load_difflux, mask_input, max_diff

SIZE = 32  # pixels, as the fixtures in conftest.py

IMAGE_TOL = 1e-4  # float images in [0, 1]
EMBED_TOL = 1e-4


def embeds(seed: int, batch: int = 1) -> torch.Tensor:
    """Random ``(batch, 32)`` image embeddings (the fixtures' CLIP width)."""
    return torch.randn(batch, 32, generator=gen(seed))


HINT = SIZE // 2 * 8  # the hint encoder downsamples 8x; the tiny MoVQ 2x


def hint(seed: int = 5, batch: int = 1) -> torch.Tensor:
    """A random ``(batch, 3, HINT, HINT)`` hint in ``[0, 1]``."""
    return torch.rand(batch, 3, HINT, HINT, generator=gen(seed))


def _diffusers(folder: Path, **kwargs: Any) -> Any:
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _both(folder: Path) -> tuple[Any, Any]:
    return load_difflux(folder), _diffusers(folder)


def _decoder_args(**extra: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "image_embeds": embeds(0, 2),
        "negative_image_embeds": embeds(1, 2),
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": 2,
        "output_type": "np",
    }
    args.update(extra)
    return args


# -- decoders ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("KandinskyV22Pipeline", {"num_images_per_prompt": 2}),
        ("KandinskyV22Pipeline", {"guidance_scale": 1.0, "negative_image_embeds": None}),
        ("KandinskyV22Img2ImgPipeline", {"image": "pil", "strength": 0.5, "num_inference_steps": 4}),
        ("KandinskyV22ControlnetPipeline", {"hint": "hint"}),
        ("KandinskyV22ControlnetImg2ImgPipeline", {"image": "pil", "hint": "hint", "strength": 0.75}),
        ("KandinskyV22InpaintPipeline", {"image": "pil", "mask_image": "mask"}),
    ],
)
def test_decoder_parity(decoder_folders: dict[str, Path], name: str, extra: dict[str, Any]) -> None:
    ours, theirs = _both(decoder_folders[name])
    assert type(ours).__name__ == name
    extra = dict(extra)
    if extra.get("image") == "pil":
        # one image per embedding: Diffusers' Kandinsky 2.2 img2img mixes batches up for 1 image and 2 embeddings
        extra["image"] = [image_input(0), image_input(1)]
    if extra.get("mask_image") == "mask":
        # Diffusers blends every output with the first image's known region: give both outputs the same image
        extra["image"] = [image_input(0)] * 2
        extra["mask_image"] = [mask_input(SIZE)] * 2
    if extra.get("hint") == "hint":
        extra["hint"] = hint(5, 2)
    if extra.get("negative_image_embeds", 0) is None:
        extra["negative_image_embeds"] = embeds(1, 2)  # Diffusers requires it even when not guiding
    args = _decoder_args(**extra)
    a = ours(**args, generator=gen(0)).images
    b = theirs(**args, generator=gen(0)).images
    assert a.shape == b.shape == (2 * args.get("num_images_per_prompt", 1), SIZE, SIZE, 3)
    # inpainting: latents agree to ~1e-5 (FAMILIES.md asks 1e-4); the MoVQ decode amplifies that to ~2e-4
    assert max_diff(a, b) <= (1 / 255 if "Inpaint" in name else IMAGE_TOL)


def test_guided_learned_variance_matches_with_a_scheduler_that_drops_it(decoder_folders: dict[str, Path]) -> None:
    """DDIM ignores the variance half: it is dropped after guidance, even when DDIM was made from the DDPM
    config and keeps its unused ``variance_type`` (Diffusers crashes there; its DDIM without the key is the oracle)."""
    import diffusers
    from difflux_schedulers import DDIMScheduler

    ours, theirs = _both(decoder_folders["KandinskyV22Pipeline"])
    ours.scheduler = DDIMScheduler.from_config(ours.scheduler.config)
    config = {k: v for k, v in theirs.scheduler.config.items() if k != "variance_type"}
    theirs.scheduler = diffusers.DDIMScheduler.from_config(config)
    assert ours.scheduler.config.variance_type == "learned_range"
    args = _decoder_args()
    assert max_diff(ours(**args, generator=gen(2)).images, theirs(**args, generator=gen(2)).images) <= IMAGE_TOL


@pytest.mark.slow  # 10-20 s: kept out of the default run
def test_size_rounds_up_like_kandinsky(decoder_folders: dict[str, Path]) -> None:
    ours, theirs = _both(decoder_folders["KandinskyV22Pipeline"])
    args = _decoder_args(height=30, width=26)
    a, b = ours(**args, generator=gen(1)).images, theirs(**args, generator=gen(1)).images
    assert a.shape[1:3] == (32, 28)  # ceil(30 / 4) * 2 latent pixels, times 2
    assert max_diff(a, b) <= IMAGE_TOL


@pytest.mark.slow  # 10-20 s: kept out of the default run
def test_one_image_per_generator(decoder_folders: dict[str, Path]) -> None:
    pipe = load_difflux(decoder_folders["KandinskyV22Pipeline"])
    args = _decoder_args()
    both = pipe(**args, generator=[gen(3), gen(4)]).images
    alone = pipe(
        **{**args, "image_embeds": embeds(0, 2)[1:], "negative_image_embeds": embeds(1, 2)[1:]}, generator=gen(4)
    ).images
    assert max_diff(both[1:], alone) <= 1e-4  # batch-size rounding only


def test_callback_replaces_image_embeds(decoder_folders: dict[str, Path]) -> None:
    pipe = load_difflux(decoder_folders["KandinskyV22Pipeline"])
    seen: list[tuple[int, ...]] = []

    def zero_out(p: Any, step: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(tuple(tensors["image_embeds"].shape))
        return {"image_embeds": torch.zeros_like(tensors["image_embeds"])}

    args = _decoder_args(num_inference_steps=3, output_type="latent")
    base = pipe(**args, generator=gen(0)).images
    changed = pipe(
        **args, generator=gen(0), callback_on_step_end=zero_out, callback_on_step_end_tensor_inputs=["image_embeds"]
    ).images
    assert seen == [(4, 32)] * 3  # [negative, positive] for two embeddings
    assert max_diff(base, changed) > 1e-3


def test_pt_output_is_in_unit_range(decoder_folders: dict[str, Path]) -> None:
    pipe = load_difflux(decoder_folders["KandinskyV22Pipeline"])
    args = _decoder_args(output_type="pt")
    images = pipe(**args, generator=gen(0)).images
    np_images = pipe(**{**args, "output_type": "np"}, generator=gen(0)).images
    assert images.shape == (2, 3, SIZE, SIZE)
    assert max_diff(images.permute(0, 2, 3, 1), np_images) <= 1e-6


@pytest.mark.slow  # 10-20 s: kept out of the default run
def test_save_load_round_trip_into_diffusers(decoder_folders: dict[str, Path], tmp_path: Path) -> None:
    ours = load_difflux(decoder_folders["KandinskyV22ControlnetPipeline"])
    ours.save_pretrained(tmp_path / "saved")
    theirs = _diffusers(tmp_path / "saved")
    args = _decoder_args(hint=hint(6, 2))
    assert max_diff(ours(**args, generator=gen(0)).images, theirs(**args, generator=gen(0)).images) <= IMAGE_TOL


BAD_DECODER = [
    ({"image_embeds": "cat"}, TypeError, "image_embeds must be a torch.Tensor"),
    ({"image_embeds": torch.zeros(1, 3)}, ValueError, "the UNet reads 32"),
    ({"image_embeds": torch.zeros(2, 1, 32)}, ValueError, r"shaped \(batch, features\)"),
    ({"negative_image_embeds": None}, ValueError, "pass negative_image_embeds"),
    ({"negative_image_embeds": torch.zeros(3, 32)}, ValueError, "3 negative_image_embeds for 2"),
    ({"image_embeds": torch.full((2, 32), float("nan"))}, ValueError, "NaN"),
    ({"height": 0}, ValueError, "height must be a positive int"),
    ({"width": 31.5}, ValueError, "width must be a positive int"),
    ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
    ({"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt=0"),
    ({"output_type": "jpeg"}, ValueError, "output_type"),
    ({"guidance_scale": "high"}, TypeError, "guidance_scale must be a number"),
    ({"latents": torch.zeros(1, 4, 4, 4)}, ValueError, "latents have shape"),
    ({"generator": [torch.Generator()]}, ValueError, "generator"),
    ({"callback_on_step_end_tensor_inputs": ["prompt_embeds"]}, ValueError, "prompt_embeds"),
]


@pytest.mark.parametrize(("bad", "error", "match"), BAD_DECODER)
def test_bad_decoder_input_is_refused_before_any_model_runs(
    decoder_folders: dict[str, Path], bad: dict[str, Any], error: type[Exception], match: str
) -> None:
    pipe = load_difflux(decoder_folders["KandinskyV22Pipeline"])
    calls: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(error, match=match):
            pipe(**_decoder_args(**bad))
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize(
    ("name", "bad", "match"),
    [
        ("KandinskyV22ControlnetPipeline", {"hint": None}, "hint must be"),
        ("KandinskyV22ControlnetPipeline", {"hint": torch.zeros(2, 1, HINT, HINT)}, r"\(batch, 3, height, width\)"),
        ("KandinskyV22ControlnetPipeline", {"hint": torch.zeros(3, 3, HINT, HINT)}, "3 hints for 2"),
        ("KandinskyV22ControlnetPipeline", {"hint": torch.zeros(2, 3, SIZE, SIZE)}, "must be 128x128"),
        ("KandinskyV22ControlnetPipeline", {"hint": torch.zeros(2, 3, SIZE, SIZE)}, "must be 128x128"),
        ("KandinskyV22Img2ImgPipeline", {"image": None}, "image must be"),
        ("KandinskyV22Img2ImgPipeline", {"image": "x"}, "image must be"),
        ("KandinskyV22Img2ImgPipeline", {"image": np.zeros((SIZE, SIZE, 3)), "strength": 1.5}, "strength"),
    ],
)
def test_bad_conditioning_is_refused(
    decoder_folders: dict[str, Path], name: str, bad: dict[str, Any], match: str
) -> None:
    pipe = load_difflux(decoder_folders[name])
    with pytest.raises((TypeError, ValueError), match=match):
        pipe(**_decoder_args(**bad))


# -- priors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"num_images_per_prompt": 2},
        {"negative_prompt": ["a dog", "low quality"]},
        {"guidance_scale": 1.0},
    ],
)
def test_prior_parity(prior_folders: dict[str, Path], extra: dict[str, Any]) -> None:
    ours, theirs = _both(prior_folders["KandinskyV22PriorPipeline"])
    args = {"prompt": ["a cat", "a red house"], "num_inference_steps": 3, **extra}
    a, b = ours(**args, generator=gen(0)), theirs(**args, generator=gen(0))
    assert a.image_embeds.shape == b.image_embeds.shape == (2 * extra.get("num_images_per_prompt", 1), 32)
    assert max_diff(a.image_embeds, b.image_embeds) <= EMBED_TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) <= EMBED_TOL


def test_prior_emb2emb_parity(prior_folders: dict[str, Path]) -> None:
    ours, theirs = _both(prior_folders["KandinskyV22PriorEmb2EmbPipeline"])
    args = {"prompt": "a cat", "image": image_input(1), "strength": 0.5, "num_inference_steps": 4}
    a, b = ours(**args, generator=gen(0)), theirs(**args, generator=gen(0))
    assert max_diff(a.image_embeds, b.image_embeds) <= EMBED_TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) <= EMBED_TOL


@pytest.mark.slow  # 10-20 s: kept out of the default run
def test_prior_interpolate_parity(prior_folders: dict[str, Path]) -> None:
    ours, theirs = _both(prior_folders["KandinskyV22PriorPipeline"])
    args = {"images_and_prompts": ["a cat", image_input(2)], "weights": [0.3, 0.7], "num_inference_steps": 2}
    a, b = ours.interpolate(**args, generator=gen(0)), theirs.interpolate(**args, generator=gen(0))
    assert max_diff(a.image_embeds, b.image_embeds) <= EMBED_TOL
    assert max_diff(a.negative_image_embeds, b.negative_image_embeds) <= EMBED_TOL


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"prompt": 3}, TypeError, "prompt must be a string"),
        ({"negative_prompt": ["a", "b"]}, ValueError, "2 negative prompts for 1"),
        ({"num_inference_steps": -1}, ValueError, "num_inference_steps"),
        ({"output_type": "pil"}, ValueError, "output_type"),
        ({"latents": torch.zeros(2, 32)}, ValueError, "latents have shape"),
    ],
)
def test_bad_prior_input_is_refused(
    prior_folders: dict[str, Path], bad: dict[str, Any], error: type[Exception], match: str
) -> None:
    pipe = load_difflux(prior_folders["KandinskyV22PriorPipeline"])
    calls: list[int] = []
    handle = pipe.prior.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(error, match=match):
            pipe(**{"prompt": "a cat", "num_inference_steps": 2, **bad})
    finally:
        handle.remove()
    assert calls == []


# -- combined ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["KandinskyV22CombinedPipeline", "KandinskyV22Img2ImgCombinedPipeline", "KandinskyV22InpaintCombinedPipeline"],
)
def test_combined_parity_and_shared_components(combined_folders: dict[str, Path], name: str) -> None:
    ours, theirs = _both(combined_folders[name])
    args: dict[str, Any] = {
        "prompt": "a cat",
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": 2,
        "prior_num_inference_steps": 2,
        "output_type": "np",
    }
    if "Img2Img" in name:
        args.update(image=image_input(3), strength=0.5, num_inference_steps=4)
    if "Inpaint" in name:
        args.update(image=image_input(3), mask_image=mask_input(SIZE))
    a, b = ours(**args, generator=gen(0)).images, theirs(**args, generator=gen(0)).images
    assert max_diff(a, b) <= IMAGE_TOL
    assert ours.decoder_pipe.unet is ours.unet and ours.prior_pipe.prior is ours.prior_prior


def test_split_call_gives_the_prior_its_arguments_and_the_decoder_the_rest() -> None:
    """A combined call's locals: prompt, negative prompt, images per prompt, latents and prior_* (unprefixed) go
    to the prior, the rest to the decoder, the generator to both; self and __class__ to neither."""
    from difflux_kandinsky.pipeline_kandinsky2_2_combined import split_call

    g, hook, noise = gen(0), (lambda *a: {}), torch.zeros(2, 8)
    call = {
        "self": object(),
        "__class__": object,
        "prompt": ["a", "b"],
        "image": "img",
        "negative_prompt": "c",
        "num_inference_steps": 9,
        "guidance_scale": 7.0,
        "strength": 0.5,
        "num_images_per_prompt": 2,
        "prior_guidance_scale": 3.0,
        "prior_num_inference_steps": 4,
        "generator": g,
        "latents": noise,
        "prior_callback_on_step_end": hook,
        "prior_callback_on_step_end_tensor_inputs": ("latents",),
        "callback_on_step_end_tensor_inputs": ("latents", "image_embeds"),
    }
    prior, decoder = split_call(call)
    assert prior == {
        "generator": g,
        "prompt": ["a", "b"],
        "negative_prompt": "c",
        "num_images_per_prompt": 2,
        "guidance_scale": 3.0,
        "num_inference_steps": 4,
        "latents": noise,
        "callback_on_step_end": hook,
        "callback_on_step_end_tensor_inputs": ("latents",),
    }
    assert decoder == {
        "image": "img",
        "num_inference_steps": 9,
        "guidance_scale": 7.0,
        "strength": 0.5,
        "generator": g,
        "callback_on_step_end_tensor_inputs": ("latents", "image_embeds"),
    }


@pytest.mark.parametrize("seed", range(4))
def test_repaint_region_grows_like_kandinsky(seed: int) -> None:
    """The vectorised erosion equals Diffusers' pixel loop on random keep-masks."""
    from difflux_kandinsky.pipeline_kandinsky2_2 import grow_repaint_region
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_inpainting import prepare_mask

    keep = (torch.rand(2, 1, 9, 7, generator=gen(seed)) > 0.2).float()
    assert torch.equal(grow_repaint_region(keep), prepare_mask(keep.clone()))


def test_combined_loads_a_decoder_folder_that_names_its_prior(
    decoder_folders: dict[str, Path],
    prior_folders: dict[str, Path],
    combined_folders: dict[str, Path],
    tmp_path: Path,
) -> None:
    """The published layout: a decoder repo whose README.md metadata names the prior repo."""
    import shutil

    from difflux.errors import LoadError
    from difflux_kandinsky import KandinskyV22CombinedPipeline

    decoder = tmp_path / "decoder"
    shutil.copytree(decoder_folders["KandinskyV22Pipeline"], decoder)
    with pytest.raises(LoadError, match="names no prior"):
        KandinskyV22CombinedPipeline.from_pretrained(decoder)
    prior = prior_folders["KandinskyV22PriorPipeline"]
    (decoder / "README.md").write_text(f"---\nlicense: apache-2.0\nprior:\n- {prior}\n---\n# decoder\n")
    connected = KandinskyV22CombinedPipeline.from_pretrained(decoder)
    connected.set_progress_bar_config(disable=True)
    assert connected.prior_pipe.prior is connected.prior_prior
    combined = load_difflux(combined_folders["KandinskyV22CombinedPipeline"])
    args = {"prompt": "a cat", "height": SIZE, "width": SIZE, "num_inference_steps": 2, "prior_num_inference_steps": 2}
    a = connected(**args, output_type="np", generator=gen(0)).images
    b = combined(**args, output_type="np", generator=gen(0)).images
    assert max_diff(a, b) <= 1e-6
