"""Tiny Kandinsky 2.2 folders built with Diffusers (the test-only oracle) and saved for difflux.

Sizes follow Diffusers' fast tests, scaled down: a two-level UNet with simple cross-attention blocks
(the published decoder's block types), a two-level MoVQ (latents at half the image size; Kandinsky
rounds the image size up to a multiple of 4 here), 32-dim CLIP embeddings, 32-pixel images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen
from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer, tiny_clip_vision

SIZE = 32  # pixels
EMBED = 32  # CLIP embedding width

#: the published decoder's layout (kandinsky-2-2-decoder), scaled down
UNET: dict[str, Any] = {
    "in_channels": 4,
    "out_channels": 8,
    "addition_embed_type": "image",
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "encoder_hid_dim": EMBED,
    "encoder_hid_dim_type": "image_proj",
    "cross_attention_dim": 16,
    "attention_head_dim": 4,
    "resnet_time_scale_shift": "scale_shift",
    "class_embed_type": None,
    "norm_num_groups": 4,
    "sample_size": 16,
}
#: the published MoVQ layout, scaled down
MOVQ: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 32,  # SpatialNorm's group norm has 32 groups whatever the config says
    "norm_type": "spatial",
    "num_vq_embeddings": 12,
    "out_channels": 3,
    "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
    "vq_embed_dim": 4,
}


def _decoder(hint: bool, variance: str) -> tuple[Any, ...]:
    from diffusers import DDPMScheduler, UNet2DConditionModel, VQModel

    torch.manual_seed(0)
    hinted = {"addition_embed_type": "image_hint", "in_channels": 8}  # latents + the encoded hint's 4 channels
    unet = UNet2DConditionModel(**{**UNET, **(hinted if hint else {})})
    torch.manual_seed(2)
    inpaint = UNet2DConditionModel(**{**UNET, "in_channels": 9})  # latents, masked image latents, mask
    torch.manual_seed(1)
    movq = VQModel(**MOVQ)
    scheduler = DDPMScheduler(
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        variance_type=variance,
        thresholding=False,
    )
    return unet.eval(), scheduler, movq.eval(), inpaint.eval()


def _save(pipe: Any, folder: Path) -> Path:
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def decoder_parts() -> dict[str, Any]:
    """Diffusers components: ``image`` and ``hint`` UNets (learned-range variance scheduler) and a MoVQ."""
    unet, scheduler, movq, inpaint = _decoder(False, "learned_range")
    hint_unet = _decoder(True, "learned_range")[0]
    return {"unet": unet, "hint_unet": hint_unet, "inpaint_unet": inpaint, "scheduler": scheduler, "movq": movq}


@pytest.fixture(scope="session")
def decoder_folders(tmp_path_factory: pytest.TempPathFactory, decoder_parts: dict[str, Any]) -> dict[str, Path]:
    """Saved Diffusers folders of the four decoder pipelines."""
    import diffusers

    root = tmp_path_factory.mktemp("kandinsky22")
    p = decoder_parts
    plain = {"unet": p["unet"], "scheduler": p["scheduler"], "movq": p["movq"]}
    hinted = {"unet": p["hint_unet"], "scheduler": p["scheduler"], "movq": p["movq"]}
    return {
        "KandinskyV22Pipeline": _save(diffusers.KandinskyV22Pipeline(**plain), root / "t2i"),
        "KandinskyV22Img2ImgPipeline": _save(diffusers.KandinskyV22Img2ImgPipeline(**plain), root / "i2i"),
        "KandinskyV22ControlnetPipeline": _save(diffusers.KandinskyV22ControlnetPipeline(**hinted), root / "cn"),
        "KandinskyV22InpaintPipeline": _save(
            diffusers.KandinskyV22InpaintPipeline(**{**plain, "unet": p["inpaint_unet"]}), root / "inpaint"
        ),
        "KandinskyV22ControlnetImg2ImgPipeline": _save(
            diffusers.KandinskyV22ControlnetImg2ImgPipeline(**hinted), root / "cn_i2i"
        ),
    }


@pytest.fixture(scope="session")
def prior_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Diffusers prior components: a one-layer PriorTransformer, tiny CLIP text and vision encoders."""
    from diffusers import PriorTransformer, UnCLIPScheduler

    torch.manual_seed(0)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=EMBED, num_layers=1)
    with torch.no_grad():  # a fresh prior's clip_std is 0: give the un-normalisation real values
        prior.clip_std.copy_(torch.rand(prior.clip_std.shape, generator=gen(3)) + 0.5)
        prior.clip_mean.copy_(torch.randn(prior.clip_mean.shape, generator=gen(4)))
    image_encoder, processor = tiny_clip_vision(seed=1, image_size=SIZE)
    scheduler = UnCLIPScheduler(
        variance_type="fixed_small_log",
        prediction_type="sample",
        num_train_timesteps=1000,
        clip_sample=True,
        clip_sample_range=10.0,
    )
    return {
        "prior": prior.eval(),
        "image_encoder": image_encoder,
        "text_encoder": tiny_clip_text_model(seed=2, projection=True),
        "tokenizer": tiny_clip_tokenizer(tmp_path_factory.mktemp("tok")),
        "scheduler": scheduler,
        "image_processor": processor,
    }


@pytest.fixture(scope="session")
def prior_folders(tmp_path_factory: pytest.TempPathFactory, prior_parts: dict[str, Any]) -> dict[str, Path]:
    import diffusers

    root = tmp_path_factory.mktemp("kandinsky22_prior")
    return {
        "KandinskyV22PriorPipeline": _save(diffusers.KandinskyV22PriorPipeline(**prior_parts), root / "prior"),
        "KandinskyV22PriorEmb2EmbPipeline": _save(
            diffusers.KandinskyV22PriorEmb2EmbPipeline(**prior_parts), root / "emb2emb"
        ),
    }


@pytest.fixture(scope="session")
def combined_folders(
    tmp_path_factory: pytest.TempPathFactory, decoder_parts: dict[str, Any], prior_parts: dict[str, Any]
) -> dict[str, Path]:
    import diffusers

    root = tmp_path_factory.mktemp("kandinsky22_combined")
    parts = {"unet": decoder_parts["unet"], "scheduler": decoder_parts["scheduler"], "movq": decoder_parts["movq"]}
    parts.update({f"prior_{k}": v for k, v in prior_parts.items()})
    return {
        "KandinskyV22CombinedPipeline": _save(diffusers.KandinskyV22CombinedPipeline(**parts), root / "t2i"),
        "KandinskyV22Img2ImgCombinedPipeline": _save(
            diffusers.KandinskyV22Img2ImgCombinedPipeline(**parts), root / "i2i"
        ),
        "KandinskyV22InpaintCombinedPipeline": _save(
            diffusers.KandinskyV22InpaintCombinedPipeline(**{**parts, "unet": decoder_parts["inpaint_unet"]}),
            root / "inpaint",
        ),
    }


# -- Kandinsky 2.1 ----------------------------------------------------------------------------------

#: the published 2.1 decoder's layout (kandinsky-2-1), scaled down: text and image conditioning
UNET21: dict[str, Any] = {
    **UNET,
    "addition_embed_type": "text_image",
    "encoder_hid_dim_type": "text_image_proj",
    "encoder_hid_dim": EMBED,
    "cross_attention_dim": EMBED,
}


def tiny_xlmr_tokenizer(folder: Path) -> Any:
    """A tiny ``XLMRobertaTokenizer`` (unigram over a handful of words), saved to and read from ``folder``."""
    from transformers import XLMRobertaTokenizer

    words = ["▁a", "▁cat", "▁red", "▁dog", "▁house", "▁blue", "▁in", "▁the", "a", "c", "t", "s", "e"]
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0) for w in words]
    XLMRobertaTokenizer(vocab=vocab, model_max_length=77).save_pretrained(folder)
    return XLMRobertaTokenizer.from_pretrained(folder)


@pytest.fixture(scope="session")
def k21_folders(
    tmp_path_factory: pytest.TempPathFactory, decoder_parts: dict[str, Any], prior_parts: dict[str, Any]
) -> dict[str, Path]:
    """Saved Diffusers folders of the Kandinsky 2.1 decoders and combined pipelines."""
    import diffusers
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

    root = tmp_path_factory.mktemp("kandinsky21")
    torch.manual_seed(3)
    config = MCLIPConfig(
        numDims=EMBED,
        transformerDimensions=EMBED,
        hidden_size=EMBED,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=20,
    )
    text_encoder = MultilingualCLIP(config).eval()
    tokenizer = tiny_xlmr_tokenizer(root / "tok")
    torch.manual_seed(4)
    unet = UNet2DConditionModel(**UNET21).eval()
    torch.manual_seed(5)
    inpaint = UNet2DConditionModel(**{**UNET21, "in_channels": 9}).eval()
    scheduler = DDIMScheduler(
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    parts = {"text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}
    parts["movq"] = decoder_parts["movq"]
    prior = {f"prior_{k}": v for k, v in prior_parts.items()}
    return {
        "KandinskyPipeline": _save(diffusers.KandinskyPipeline(**parts), root / "t2i"),
        "KandinskyImg2ImgPipeline": _save(diffusers.KandinskyImg2ImgPipeline(**parts), root / "i2i"),
        "KandinskyInpaintPipeline": _save(
            diffusers.KandinskyInpaintPipeline(**{**parts, "unet": inpaint}), root / "inpaint"
        ),
        "KandinskyPriorPipeline": _save(diffusers.KandinskyPriorPipeline(**prior_parts), root / "prior"),
        "KandinskyCombinedPipeline": _save(diffusers.KandinskyCombinedPipeline(**parts, **prior), root / "c_t2i"),
        "KandinskyImg2ImgCombinedPipeline": _save(
            diffusers.KandinskyImg2ImgCombinedPipeline(**parts, **prior), root / "c_i2i"
        ),
        "KandinskyInpaintCombinedPipeline": _save(
            diffusers.KandinskyInpaintCombinedPipeline(**{**parts, "unet": inpaint}, **prior), root / "c_inpaint"
        ),
    }


# -- Kandinsky 3 ------------------------------------------------------------------------------------

#: the published Kandinsky 3 UNet's block structure, scaled down (Diffusers' fast-test sizes)
K3_UNET: dict[str, Any] = {
    "in_channels": 4,
    "time_embedding_dim": 4,
    "groups": 2,
    "attention_head_dim": 4,
    "layers_per_block": 3,
    "block_out_channels": (32, 64),
    "cross_attention_dim": 4,
    "encoder_hid_dim": 32,
}


@pytest.fixture(scope="session")
def k3_folders(tmp_path_factory: pytest.TempPathFactory, decoder_parts: dict[str, Any]) -> dict[str, Path]:
    """Saved Diffusers folders of Kandinsky 3 text-to-image and image-to-image (T5 text encoder)."""
    import diffusers
    from difflux_transformers.testing import tiny_t5_encoder, tiny_t5_tokenizer
    from diffusers import DDPMScheduler, Kandinsky3UNet

    root = tmp_path_factory.mktemp("kandinsky3")
    torch.manual_seed(6)
    unet = Kandinsky3UNet(**K3_UNET).eval()
    with torch.no_grad():  # a fresh UNet's zero-initialised norms and outputs would hide most of the network
        g = gen(7)
        for p in unet.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    scheduler = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", clip_sample=True, thresholding=False, variance_type="fixed_small"
    )
    parts = {
        "tokenizer": tiny_t5_tokenizer(root / "tok"),
        "text_encoder": tiny_t5_encoder(seed=8),
        "unet": unet,
        "scheduler": scheduler,
        "movq": decoder_parts["movq"],
    }
    return {
        "Kandinsky3Pipeline": _save(diffusers.Kandinsky3Pipeline(**parts), root / "t2i"),
        "Kandinsky3Img2ImgPipeline": _save(diffusers.Kandinsky3Img2ImgPipeline(**parts), root / "i2i"),
    }
