"""Tiny unCLIP components built with Diffusers (the test-only oracle), sizes after Diffusers' fast tests.

Diffusers 0.42.1 cannot reload an unCLIP folder, so its pipeline is built in memory from these
components (the in-memory oracle), while difflux loads the folder Diffusers saved (the published layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer, tiny_clip_vision


@pytest.fixture(scope="session")
def unclip_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    torch.manual_seed(0)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1)
    with torch.no_grad():
        prior.clip_std.fill_(1.0)
    torch.manual_seed(1)
    text_proj = UnCLIPTextProjModel(
        clip_embeddings_dim=32, time_embed_dim=128, cross_attention_dim=100, clip_extra_context_tokens=4
    )
    torch.manual_seed(2)
    decoder = UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=100,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
    )
    super_res = {
        "sample_size": 32,
        "layers_per_block": 1,
        "down_block_types": ("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
        "up_block_types": ("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        "block_out_channels": (32, 64),
        "in_channels": 6,
        "out_channels": 3,
    }
    torch.manual_seed(3)
    first = UNet2DModel(**super_res)
    torch.manual_seed(4)
    last = UNet2DModel(**super_res)
    image_encoder, processor = tiny_clip_vision(seed=5, image_size=32)
    return {
        "prior": prior.eval(),
        "decoder": decoder.eval(),
        "text_encoder": tiny_clip_text_model(6, projection=True),
        "tokenizer": tiny_clip_tokenizer(tmp_path_factory.mktemp("tok")),
        "text_proj": text_proj.eval(),
        "super_res_first": first.eval(),
        "super_res_last": last.eval(),
        "prior_scheduler": UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        "decoder_scheduler": UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        "super_res_scheduler": UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon"),
        "image_encoder": image_encoder.eval(),
        "feature_extractor": processor,
    }


@pytest.fixture(scope="session")
def unclip_pipes(tmp_path_factory: pytest.TempPathFactory, unclip_parts: dict[str, Any]) -> dict[str, tuple[Any, Path]]:
    """``{name: (Diffusers pipeline in memory, folder it saved)}`` for both unCLIP pipelines."""
    from diffusers.pipelines.deprecated.unclip import UnCLIPImageVariationPipeline, UnCLIPPipeline

    root = tmp_path_factory.mktemp("unclip")
    p = dict(unclip_parts)
    text2img = UnCLIPPipeline(**{k: v for k, v in p.items() if k not in ("image_encoder", "feature_extractor")})
    variation = UnCLIPImageVariationPipeline(**{k: v for k, v in p.items() if k not in ("prior", "prior_scheduler")})
    out = {}
    for name, pipe in (("UnCLIPPipeline", text2img), ("UnCLIPImageVariationPipeline", variation)):
        pipe.set_progress_bar_config(disable=True)
        pipe.save_pretrained(root / name, safe_serialization=True)
        out[name] = (pipe, root / name)
    return out


@pytest.fixture(scope="session")
def stable_unclip_folders(tmp_path_factory: pytest.TempPathFactory, unclip_parts: dict[str, Any]) -> dict[str, Path]:
    """Saved Diffusers Stable unCLIP folders (text-to-image with a DDPM prior, and image-conditioned)."""
    import diffusers
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, PriorTransformer, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    root = tmp_path_factory.mktemp("stable_unclip")
    torch.manual_seed(10)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1)
    with torch.no_grad():
        prior.clip_std.fill_(1.0)
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=32)
    with torch.no_grad():
        normalizer.mean.copy_(torch.randn(1, 32, generator=torch.Generator().manual_seed(11)) * 0.1)
        normalizer.std.copy_(torch.rand(1, 32, generator=torch.Generator().manual_seed(12)) + 0.5)
    torch.manual_seed(13)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        attention_head_dim=(2, 4),
        class_embed_type="projection",
        projection_class_embeddings_input_dim=64,
        cross_attention_dim=32,
        layers_per_block=1,
        upcast_attention=True,
        use_linear_projection=True,
    )
    torch.manual_seed(14)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    )
    decoder = {
        "image_normalizer": normalizer,
        "image_noising_scheduler": DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        "tokenizer": unclip_parts["tokenizer"],
        "text_encoder": tiny_clip_text_model(15),
        "unet": unet.eval(),
        "scheduler": DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        "vae": vae.eval(),
    }
    text2img = diffusers.StableUnCLIPPipeline(
        prior_tokenizer=unclip_parts["tokenizer"],
        prior_text_encoder=unclip_parts["text_encoder"],
        prior=prior.eval(),
        prior_scheduler=DDPMScheduler(
            variance_type="fixed_small_log",
            prediction_type="sample",
            clip_sample=True,
            clip_sample_range=5.0,
            beta_schedule="squaredcos_cap_v2",
        ),
        **decoder,
    )
    image = diffusers.StableUnCLIPImg2ImgPipeline(
        feature_extractor=unclip_parts["feature_extractor"], image_encoder=unclip_parts["image_encoder"], **decoder
    )
    text2img.save_pretrained(root / "text2img", safe_serialization=True)
    image.save_pretrained(root / "image", safe_serialization=True)
    return {"StableUnCLIPPipeline": root / "text2img", "StableUnCLIPImg2ImgPipeline": root / "image"}
