"""Attention switches on a tiny Stable Diffusion pipeline: slicing gives the unsliced images and
what Diffusers' same switch gives; the xFormers switch refuses clearly where it cannot run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.attention import AttentionBackendChoice
from difflux.errors import ConfigError

PROMPT = "a photo of a cat on the red horse"
KW: dict[str, Any] = {"prompt": PROMPT, "num_inference_steps": 2, "guidance_scale": 6.0, "output_type": "np"}


@pytest.fixture(scope="module")
def built(sd: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, Any]:
    """The saved folder, the Diffusers pipeline, and its plain images."""
    tmp = tmp_path_factory.mktemp("sd-attn")
    ref = sd.diffusers_pipeline(
        "StableDiffusionPipeline", sd.diffusers_sd_components(tmp), requires_safety_checker=False
    )
    ref.save_pretrained(tmp / "saved")
    return tmp / "saved", ref, ref(**KW, generator=sd.gen(0)).images


@pytest.fixture(scope="module")
def plain(sd: Any, built: tuple[Path, Any, Any]) -> Any:
    return sd.load_difflux(built[0])(**KW, generator=sd.gen(0)).images


def test_plain_pipeline_matches_diffusers(sd: Any, built: tuple[Path, Any, Any], plain: Any) -> None:
    assert sd.max_diff(plain, built[2]) <= 1e-4


@pytest.mark.parametrize("slice_size", ["auto", "max", 2])
def test_sliced_pipeline_matches_unsliced_and_diffusers(
    sd: Any, built: tuple[Path, Any, Any], plain: Any, slice_size: Any
) -> None:
    folder, ref, _ = built
    pipe = sd.load_difflux(folder)
    pipe.enable_attention_slicing(slice_size)
    unet_attn = [m for m in pipe.unet.modules() if type(m).__name__ == "Attention"]
    assert unet_attn and all(m.attention_backend == AttentionBackendChoice("sliced") for m in unet_attn)
    assert {m.attention_backend.options["slice_size"] for m in unet_attn} == {slice_size}
    sliced = pipe(**KW, generator=sd.gen(0)).images
    assert sd.max_diff(sliced, plain) <= 1e-5
    ref.enable_attention_slicing(slice_size)
    try:
        theirs = ref(**KW, generator=sd.gen(0)).images
    finally:
        ref.disable_attention_slicing()
    assert sd.max_diff(sliced, theirs) <= 1e-4
    pipe.disable_attention_slicing()
    assert all(m.attention_backend is None for m in unet_attn)
    if slice_size == "max":
        assert sd.max_diff(pipe(**KW, generator=sd.gen(0)).images, plain) == 0.0


def test_unet_slice_size_checked_like_diffusers(sd: Any, built: tuple[Path, Any, Any]) -> None:
    folder, ref, _ = built
    pipe = sd.load_difflux(folder)
    with pytest.raises(ValueError, match="slice_size=3 is more heads"):  # the tiny UNet's layers have 2 heads
        pipe.unet.set_attention_slice(3)
    with pytest.raises(ValueError):
        ref.unet.set_attention_slice(3)
    with pytest.raises(ValueError, match="StableDiffusionPipeline slice_size=3 is more heads"):
        pipe.enable_attention_slicing(3)
    assert all(getattr(m, "attention_backend", None) is None for m in pipe.unet.modules())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without xFormers / CUDA")
def test_xformers_switch_refuses_with_the_reason(sd: Any, built: tuple[Path, Any, Any]) -> None:
    pipe = sd.load_difflux(built[0])
    with pytest.raises(ConfigError, match="xformers"):
        pipe.enable_xformers_memory_efficient_attention()
    assert all(getattr(m, "attention_backend", None) is None for m in pipe.unet.modules())
    pipe.disable_xformers_memory_efficient_attention()  # a no-op, as in Diffusers
