"""Tiny DeepFloyd IF pipelines built and saved by Diffusers 0.42.1 (the test-only oracle), once per session.

Sizes follow Diffusers' own IF fast tests (32-pixel samples, two UNet blocks of 32 / 64 channels) with the
block and embedding types of the published IF-I / IF-II UNets (simple cross-attention blocks, text
addition embedding, scale-shift resnets; stage II adds the timestep class embedding of its noise level).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

SIZE = 32  # stage I sample side, pixels
SR_SIZE = 32  # stage II output side (its input is a 16-pixel image)

#: the published IF-I-XL UNet's layout, scaled down
UNET: dict[str, Any] = {
    "sample_size": SIZE,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "in_channels": 3,
    "out_channels": 6,
    "cross_attention_dim": 32,
    "encoder_hid_dim": 32,
    "attention_head_dim": 8,
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 2,
    "cross_attention_norm": "group_norm",
    "resnet_time_scale_shift": "scale_shift",
    "act_fn": "gelu",
}
#: the published IF-II UNet's layout, scaled down: samples + upscaled image in, noise level as class label
SR_UNET: dict[str, Any] = {
    **UNET,
    "sample_size": SR_SIZE,
    "in_channels": 6,
    "class_embed_type": "timestep",
    "mid_block_scale_factor": 1.414,
    "time_embedding_act_fn": "gelu",
    "time_embedding_dim": 32,
}


def _schedulers() -> tuple[Any, Any]:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        beta_start=0.0001,
        beta_end=0.02,
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.0,
        prediction_type="epsilon",
        variance_type="learned_range",
    )
    noising = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001)
    return scheduler, noising


@pytest.fixture(scope="session")
def if_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Diffusers components: tiny T5, a stage I and a stage II UNet, the two schedulers."""
    from difflux_transformers.testing import tiny_t5_encoder, tiny_t5_tokenizer
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET).eval()
    torch.manual_seed(1)
    sr_unet = UNet2DConditionModel(**SR_UNET).eval()
    scheduler, noising = _schedulers()
    return {
        "tokenizer": tiny_t5_tokenizer(tmp_path_factory.mktemp("t5tok")),
        "text_encoder": tiny_t5_encoder(seed=2),
        "unet": unet,
        "sr_unet": sr_unet,
        "scheduler": scheduler,
        "image_noising_scheduler": noising,
    }


def _save(pipe: Any, folder: Path) -> Path:
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def if_folders(tmp_path_factory: pytest.TempPathFactory, if_parts: dict[str, Any]) -> dict[str, Path]:
    """Saved Diffusers folders of the IF pipelines (no safety checker or watermarker)."""
    import diffusers

    root = tmp_path_factory.mktemp("deepfloyd_if")
    p = if_parts
    base = {
        "tokenizer": p["tokenizer"],
        "text_encoder": p["text_encoder"],
        "unet": p["unet"],
        "scheduler": p["scheduler"],
        "safety_checker": None,
        "feature_extractor": None,
        "watermarker": None,
        "requires_safety_checker": False,
    }
    sr = {**base, "unet": p["sr_unet"], "image_noising_scheduler": p["image_noising_scheduler"]}
    folders: dict[str, Path] = {}
    for name, parts in (
        ("IFPipeline", base),
        ("IFSuperResolutionPipeline", sr),
        ("IFImg2ImgPipeline", base),
        ("IFImg2ImgSuperResolutionPipeline", sr),
        ("IFInpaintingPipeline", base),
        ("IFInpaintingSuperResolutionPipeline", sr),
    ):
        folders[name] = _save(getattr(diffusers, name)(**parts), root / name)
    return folders


@pytest.fixture(scope="session")
def if_checked_folder(tmp_path_factory: pytest.TempPathFactory, if_parts: dict[str, Any]) -> tuple[Path, Any]:
    """A saved Diffusers ``IFPipeline`` with a tiny ``IFSafetyChecker`` (flags nothing: both heads' biases are
    -10), a ``CLIPImageProcessor`` and an ``IFWatermarker`` holding a random RGBA mark; and the checker itself
    (Diffusers' ``IFSafetyChecker`` skips ``post_init``, so transformers 5 cannot load it back: the oracle gets
    it in memory)."""
    import diffusers
    from difflux_transformers.testing import tiny_clip_vision
    from diffusers.pipelines.deepfloyd_if import IFSafetyChecker, IFWatermarker
    from transformers import CLIPConfig

    vision, processor = tiny_clip_vision(seed=3, image_size=SIZE)
    config = CLIPConfig(vision_config=vision.config.to_dict(), projection_dim=32)
    torch.manual_seed(4)
    checker = IFSafetyChecker(config).eval()
    watermarker = IFWatermarker()
    with torch.no_grad():
        checker.p_head.bias.fill_(-10.0)
        checker.w_head.bias.fill_(-10.0)
        mark = torch.randint(0, 256, (62, 62, 4), generator=torch.Generator().manual_seed(5)).float()
        watermarker.watermark_image.copy_(mark)
    p = if_parts
    pipe = diffusers.IFPipeline(
        tokenizer=p["tokenizer"],
        text_encoder=p["text_encoder"],
        unet=p["unet"],
        scheduler=p["scheduler"],
        safety_checker=checker,
        feature_extractor=processor,
        watermarker=watermarker,
    )
    return _save(pipe, tmp_path_factory.mktemp("if_checked") / "IFPipeline"), checker
