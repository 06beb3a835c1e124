"""Depth-to-image, image variation and the two upscalers against Diffusers, plus their conformance suites."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difflux.testing import PipelineConformance
from difflux_models import AutoencoderKL, UNet2DConditionModel
from difflux_schedulers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler
from difflux_stable_diffusion import (
    StableDiffusionDepth2ImgPipeline,
    StableDiffusionImageVariationPipeline,
    StableDiffusionLatentUpscalePipeline,
    StableDiffusionUpscalePipeline,
)
from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer, tiny_clip_vision, tiny_dpt

PROMPT = "a photo of a cat"
PIXEL_TOL = 1 / 255
LATENT_TOL = 1e-4
_VOCAB = Path(tempfile.mkdtemp(prefix="difflux-sd-more-vocab-"))
_SCHED = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def latent_upscaler_unet_config() -> dict[str, Any]:
    """A tiny UNet shaped like the x2 latent upscaler's: 8 input channels (latents + image), 5 out,
    Fourier timesteps and a 160-wide ``timestep_cond`` (noise-level embedding + pooled text)."""
    return {
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "sample_size": 16,
        "in_channels": 8,
        "out_channels": 5,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "norm_num_groups": 2,
        "attention_head_dim": 2,
        "time_embedding_type": "fourier",
        "time_cond_proj_dim": 160,
        "timestep_post_act": "gelu",
        "act_fn": "gelu",
    }


def x4_upscaler_unet_config() -> dict[str, Any]:
    """A tiny UNet shaped like the x4 upscaler's: 7 input channels (latents + noised image), noise-level classes."""
    return {
        "block_out_channels": (8, 16),
        "layers_per_block": 1,
        "sample_size": 16,
        "in_channels": 7,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "norm_num_groups": 2,
        "attention_head_dim": 2,
        "use_linear_projection": True,
        "num_class_embeds": 100,
    }


def _save_and_load(sd: Any, ref: Any, folder: Path, name: str) -> Any:
    ref.set_progress_bar_config(disable=True)
    ref.save_pretrained(folder)
    ours = sd.load_difflux(folder)
    assert type(ours).__name__ == name
    return ours


# -- depth to image ------------------------------------------------------------------------------


def _depth2img(sd: Any, tmp_path: Path) -> tuple[Any, Any]:
    import diffusers

    components = sd.diffusers_sd_components(tmp_path, in_channels=5)
    for name in ("safety_checker", "feature_extractor", "image_encoder"):
        components.pop(name)
    components["depth_estimator"], components["feature_extractor"] = tiny_dpt()
    ref = diffusers.StableDiffusionDepth2ImgPipeline(**components)
    return ref, _save_and_load(sd, ref, tmp_path / "depth", "StableDiffusionDepth2ImgPipeline")


@pytest.mark.parametrize("given_depth", [False, True])
def test_depth2img_parity(sd: Any, tmp_path: Path, given_depth: bool) -> None:
    ref, ours = _depth2img(sd, tmp_path)
    kw: dict[str, Any] = {"prompt": PROMPT, "image": sd.image_input(), "strength": 0.75, "num_inference_steps": 4}
    if given_depth:
        kw["depth_map"] = torch.rand(1, 24, 24, generator=sd.gen(5))
    a = ref(**kw, generator=sd.gen(1), output_type="np").images
    b = ours(**kw, generator=sd.gen(1), output_type="np").images
    assert sd.max_diff(a, b) <= PIXEL_TOL


def test_depth2img_needs_an_estimator_or_a_depth_map(sd: Any, tmp_path: Path) -> None:
    _, ours = _depth2img(sd, tmp_path)
    bare = StableDiffusionDepth2ImgPipeline(**{**ours.components, "depth_estimator": None})
    with pytest.raises(ValueError, match="pass depth_map="):
        bare(PROMPT, image=sd.image_input(), num_inference_steps=2)


# -- image variation -----------------------------------------------------------------------------


def _variation(sd: Any, tmp_path: Path) -> tuple[Any, Any]:
    import diffusers

    encoder, processor = tiny_clip_vision()
    ref = diffusers.StableDiffusionImageVariationPipeline(
        vae=sd.diffusers_vae(),
        image_encoder=encoder,
        unet=sd.diffusers_unet(0),
        scheduler=diffusers.DDIMScheduler(**_SCHED),
        safety_checker=None,
        feature_extractor=processor,
        requires_safety_checker=False,
    )
    return ref, _save_and_load(sd, ref, tmp_path / "variation", "StableDiffusionImageVariationPipeline")


def test_image_variation_parity(sd: Any, tmp_path: Path) -> None:
    ref, ours = _variation(sd, tmp_path)
    kw: dict[str, Any] = {"image": sd.image_input(), "num_inference_steps": 3, "num_images_per_prompt": 2}
    for output_type, tol in (("latent", LATENT_TOL), ("np", PIXEL_TOL)):
        a = ref(**kw, generator=sd.gen(0), output_type=output_type).images
        b = ours(**kw, generator=sd.gen(0), output_type=output_type).images
        assert sd.max_diff(a, b) <= tol, output_type


# -- x4 upscaler ---------------------------------------------------------------------------------


def _x4(sd: Any, tmp_path: Path) -> tuple[Any, Any]:
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**x4_upscaler_unet_config())
    ref = diffusers.StableDiffusionUpscalePipeline(
        vae=sd.diffusers_vae(),
        text_encoder=tiny_clip_text_model(0),
        tokenizer=tiny_clip_tokenizer(tmp_path / "vocab"),
        unet=unet,
        low_res_scheduler=diffusers.DDPMScheduler(),
        scheduler=diffusers.DDIMScheduler(prediction_type="v_prediction"),
        max_noise_level=350,
    )
    return ref, _save_and_load(sd, ref, tmp_path / "x4", "StableDiffusionUpscalePipeline")


def test_x4_upscale_parity(sd: Any, tmp_path: Path) -> None:
    ref, ours = _x4(sd, tmp_path)
    assert ours.vae.config.scaling_factor == pytest.approx(0.08333)
    kw: dict[str, Any] = {
        "prompt": PROMPT,
        "image": sd.image_input(size=16),
        "num_inference_steps": 3,
        "guidance_scale": 6.0,
        "noise_level": 20,
    }
    a = ref(**kw, generator=sd.gen(2), output_type="np").images
    b = ours(**kw, generator=sd.gen(2), output_type="np").images
    assert a.shape == (1, 32, 32, 3)
    assert sd.max_diff(a, b) <= PIXEL_TOL
    with pytest.raises(ValueError, match="max_noise_level"):
        ours(PROMPT, image=sd.image_input(size=16), noise_level=351, num_inference_steps=1)


# -- x2 latent upscaler --------------------------------------------------------------------------


def _latent_upscaler(sd: Any, tmp_path: Path) -> tuple[Any, Any]:
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(**latent_upscaler_unet_config())
    ref = diffusers.StableDiffusionLatentUpscalePipeline(
        vae=sd.diffusers_vae(),
        text_encoder=tiny_clip_text_model(0),
        tokenizer=tiny_clip_tokenizer(tmp_path / "vocab"),
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(prediction_type="sample"),
    )
    return ref, _save_and_load(sd, ref, tmp_path / "latent-x2", "StableDiffusionLatentUpscalePipeline")


@pytest.mark.parametrize("from_latents", [True, False])
def test_latent_upscale_parity(sd: Any, tmp_path: Path, from_latents: bool) -> None:
    ref, ours = _latent_upscaler(sd, tmp_path)
    image = torch.randn(1, 4, 8, 8, generator=sd.gen(4)) if from_latents else sd.image_input(size=16)
    kw: dict[str, Any] = {"prompt": PROMPT, "image": image, "num_inference_steps": 3, "guidance_scale": 4.0}
    for output_type, tol in (("latent", LATENT_TOL), ("np", PIXEL_TOL)):
        a = ref(**kw, generator=sd.gen(3), output_type=output_type).images
        b = ours(**kw, generator=sd.gen(3), output_type=output_type).images
        assert sd.max_diff(a, b) <= tol, output_type


# -- conformance, on difflux components ----------------------------------------------------------


def _unet(**overrides: Any) -> Any:
    config: dict[str, Any] = {
        "block_out_channels": (4, 8),
        "layers_per_block": 1,
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "norm_num_groups": 2,
        "attention_head_dim": 2,
    }
    config.update(overrides)
    torch.manual_seed(0)
    return UNet2DConditionModel(**config)


def _vae() -> Any:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(4, 8),
        latent_channels=4,
        norm_num_groups=2,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )


def _text() -> dict[str, Any]:
    return {"text_encoder": tiny_clip_text_model(0), "tokenizer": tiny_clip_tokenizer(_VOCAB)}


def _image(seed: int) -> Any:
    rng = np.random.default_rng(seed)
    import PIL.Image

    return PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


class _Conformance(PipelineConformance):
    other_dtype = torch.float64


class TestDepth2ImgConformance(_Conformance):
    pipeline_class = StableDiffusionDepth2ImgPipeline

    def make_components(self) -> dict[str, Any]:
        estimator, processor = tiny_dpt()
        return {"vae": _vae(), **_text(), "unet": _unet(in_channels=5), "scheduler": DDIMScheduler(**_SCHED),
                "depth_estimator": estimator, "feature_extractor": processor}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"prompt": PROMPT, "image": _image(seed), "num_inference_steps": 2, "output_type": "np",
                "generator": torch.Generator().manual_seed(seed)}


class TestImageVariationConformance(_Conformance):
    pipeline_class = StableDiffusionImageVariationPipeline

    def make_components(self) -> dict[str, Any]:
        encoder, processor = tiny_clip_vision()
        return {"vae": _vae(), "image_encoder": encoder, "unet": _unet(), "scheduler": DDIMScheduler(**_SCHED),
                "feature_extractor": processor, "requires_safety_checker": False}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"image": _image(seed), "num_inference_steps": 2, "output_type": "np",
                "generator": torch.Generator().manual_seed(seed)}


class TestUpscaleConformance(_Conformance):
    pipeline_class = StableDiffusionUpscalePipeline

    def make_components(self) -> dict[str, Any]:
        vae = _vae()
        vae.register_to_config(scaling_factor=0.08333)
        return {"vae": vae, **_text(), "unet": _unet(**x4_upscaler_unet_config()),
                "low_res_scheduler": DDPMScheduler(), "scheduler": DDIMScheduler(**_SCHED)}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        return {"prompt": PROMPT, "image": torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed)),
                "num_inference_steps": 2, "output_type": "np", "generator": torch.Generator().manual_seed(seed)}


class TestLatentUpscaleConformance(_Conformance):
    pipeline_class = StableDiffusionLatentUpscalePipeline

    def make_components(self) -> dict[str, Any]:
        return {"vae": _vae(), **_text(), "unet": _unet(**latent_upscaler_unet_config()),
                "scheduler": EulerDiscreteScheduler(prediction_type="sample")}

    def make_inputs(self, seed: int) -> dict[str, Any]:
        latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        return {"prompt": PROMPT, "image": latents, "num_inference_steps": 2, "output_type": "np",
                "generator": torch.Generator().manual_seed(seed)}
