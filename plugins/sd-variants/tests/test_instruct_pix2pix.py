"""InstructPix2Pix (SD 1.x and SDXL) against Diffusers: same folder, same seed, same images."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture(scope="module")
def ip2p(sv: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any]]:
    """``{"sd" | "sdxl": (Diffusers pipeline, difflux's loaded from the saved folder)}`` (8-channel UNets)."""
    folder = tmp_path_factory.mktemp("ip2p")
    sd = sv.saved_pair(folder, "StableDiffusionInstructPix2PixPipeline",
                       sv.sd_components(folder, "EulerAncestralDiscreteScheduler", in_channels=8),
                       requires_safety_checker=False)
    sdxl = sv.saved_pair(folder, "StableDiffusionXLInstructPix2PixPipeline",
                         sv.sdxl_components(folder, in_channels=8), add_watermarker=False)
    return {"sd": sd, "sdxl": sdxl}


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="default"),
        pytest.param({"guidance_scale": 4.0, "image_guidance_scale": 2.0, "negative_prompt": "blue",
                      "num_images_per_prompt": 2}, id="scales-negative", marks=pytest.mark.slow),
        # no guidance: one UNet batch
        pytest.param({"image_guidance_scale": 0.5}, id="unguided", marks=pytest.mark.slow),
    ],
)
def test_sd_instruct_pix2pix_parity(sv: Any, ip2p: Any, options: dict[str, Any]) -> None:
    ref, ours = ip2p["sd"]
    kw = {"prompt": sv.PROMPT, "image": sv.image_input(2), "num_inference_steps": 3, "output_type": "np", **options}
    assert sv.max_diff(ref(**kw, generator=sv.gen(0)).images, ours(**kw, generator=sv.gen(0)).images) <= sv.PIXEL_TOL


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"output_type": "np"}, id="default"),
        pytest.param({"guidance_rescale": 0.7, "negative_prompt": "blue", "original_size": (64, 64),
                      "output_type": "latent"}, id="rescale", marks=pytest.mark.slow),
    ],
)
def test_sdxl_instruct_pix2pix_parity(sv: Any, ip2p: Any, options: dict[str, Any]) -> None:
    ref, ours = ip2p["sdxl"]
    kw = {"prompt": sv.PROMPT, "image": sv.image_input(4), "num_inference_steps": 2, **options}
    tol = sv.LATENT_TOL if options["output_type"] == "latent" else sv.PIXEL_TOL
    assert sv.max_diff(ref(**kw, generator=sv.gen(1)).images, ours(**kw, generator=sv.gen(1)).images) <= tol


def test_instruct_pix2pix_callback_sees_three_way_image_latents(sv: Any, ip2p: Any) -> None:
    _, ours = ip2p["sd"]
    seen: dict[str, Any] = {}

    def cb(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.update(tensors)
        return tensors

    ours(prompt=sv.PROMPT, image=sv.image_input(2), num_inference_steps=2, output_type="latent",
         callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["image_latents", "prompt_embeds"])
    image_latents = seen["image_latents"]
    assert image_latents.shape[0] == 3 and float(image_latents[2].abs().max()) == 0.0
    assert sv.max_diff(image_latents[0], image_latents[1]) == 0.0
    assert seen["prompt_embeds"].shape[0] == 3


@pytest.mark.parametrize(
    ("which", "bad", "match"),
    [
        ("sd", {"image": None}, "image"),
        ("sd", {"image_guidance_scale": float("inf")}, "image_guidance_scale"),
        ("sd", {"image": "cat.png"}, "image"),
        ("sdxl", {"image_guidance_scale": "high"}, "image_guidance_scale"),
        ("sdxl", {"prompt_embeds": torch.zeros(1, 77, 64), "prompt": None}, "pooled_prompt_embeds"),
    ],
)
def test_instruct_pix2pix_bad_input(sv: Any, ip2p: Any, which: str, bad: dict[str, Any], match: str) -> None:
    _, ours = ip2p[which]
    kw = {"prompt": sv.PROMPT, "image": sv.image_input(2), "num_inference_steps": 2, **bad}
    with pytest.raises((ValueError, TypeError), match=match):
        ours(**kw)


def test_instruct_pix2pix_needs_an_8_channel_unet(sv: Any, ip2p: Any) -> None:
    from difflux_sd_variants import StableDiffusionInstructPix2PixPipeline

    _, ours = ip2p["sd"]
    pipe = StableDiffusionInstructPix2PixPipeline(**{**ours.components, "unet": _four_channel_unet(ours.unet)},
                                                  requires_safety_checker=False)
    with pytest.raises(ValueError, match="input channels"):
        pipe(prompt=sv.PROMPT, image=sv.image_input(2), num_inference_steps=2)


def _four_channel_unet(unet: Any) -> Any:
    from difflux_models import UNet2DConditionModel

    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    return UNet2DConditionModel(**{**config, "in_channels": 4})
