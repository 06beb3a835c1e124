"""Tiny classic pipelines built with Diffusers (the test-only oracle) in the published layouts, scaled down.

* LDM text-to-image: ``UNet2DConditionModel``, ``AutoencoderKL`` (four blocks: 8x, as published), a
  two-layer ``LDMBertModel``, a ``BertTokenizer`` over a tiny word-piece vocabulary, ``DDIMScheduler``.
* LDM super-resolution: ``UNet2DModel`` (6 input channels: latents + low-resolution image), a
  three-block ``VQModel`` (4x), ``DDIMScheduler``.
* VQ-Diffusion: a discrete ``Transformer2DModel``, ``VQModel``, a tiny CLIP, ``VQDiffusionScheduler``,
  learned classifier-free embeddings (Diffusers 0.42.1 cannot reload this folder: compared in memory).
* Value-guided planning: the hopper planner / value-function ``UNet1DModel`` layouts, ``DDPMScheduler``
  and a toy environment (:class:`ToyEnv`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from difflux_stable_diffusion.testing import gen as gen
from difflux_stable_diffusion.testing import image_input as image_input
from difflux_stable_diffusion.testing import load_difflux as load_difflux
from difflux_stable_diffusion.testing import max_diff as max_diff

WORDS = ("a", "photo", "of", "cat", "dog", "red", "the", "horse", "on", "blue")


def tiny_bert_tokenizer(folder: Path) -> Any:
    """A ``BertTokenizer`` over a tiny word-piece vocabulary (a few words, every letter), saved and read back."""
    from transformers import BertTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *(f"##{c}" for c in letters)]
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    BertTokenizer(vocab=vocab).save_pretrained(str(folder))
    return BertTokenizer.from_pretrained(str(folder))


def randomize(model: torch.nn.Module, seed: int, scale: float = 0.1) -> Any:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def diffusers_ldm_text2img(folder: Path) -> Any:
    import diffusers
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig, LDMBertModel

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=2, layers_per_block=1,
    )  # fmt: skip
    bert = LDMBertModel(LDMBertConfig(d_model=32, encoder_layers=2, encoder_ffn_dim=37, encoder_attention_heads=4,
                                      head_dim=8, vocab_size=100, max_position_embeddings=77))  # fmt: skip
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    pipe = diffusers.LDMTextToImagePipeline(
        vqvae=randomize(vae, 1).eval(), bert=randomize(bert, 2, 0.05).eval(), tokenizer=tiny_bert_tokenizer(folder),
        unet=randomize(unet, 3, 0.05).eval(), scheduler=scheduler,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_ldm_superres() -> Any:
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=16, in_channels=6, out_channels=3,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=4,
    )  # fmt: skip
    vqvae = diffusers.VQModel(
        block_out_channels=(8, 8, 8), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=3, norm_num_groups=2, num_vq_embeddings=16,
    )  # fmt: skip
    pipe = diffusers.LDMSuperResolutionPipeline(
        vqvae=randomize(vqvae, 4).eval(), unet=randomize(unet, 5, 0.05).eval(), scheduler=diffusers.DDIMScheduler()
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


VQ_CLASSES = 12  # codes; the transformer and scheduler also have the mask token


def diffusers_vq_diffusion(folder: Path, learnable: bool) -> Any:
    import diffusers
    from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
        LearnedClassifierFreeSamplingEmbeddings,
        VQDiffusionPipeline,
    )

    torch.manual_seed(0)
    vqvae = diffusers.VQModel(
        block_out_channels=(8, 8), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=3, num_vq_embeddings=VQ_CLASSES, vq_embed_dim=3,
        norm_num_groups=2,
    )  # fmt: skip
    transformer = diffusers.Transformer2DModel(
        num_attention_heads=2, attention_head_dim=8, num_vector_embeds=VQ_CLASSES + 1, sample_size=6,
        num_layers=1, cross_attention_dim=32, num_embeds_ada_norm=100, activation_fn="geglu-approximate",
        norm_num_groups=32, attention_bias=True,
    )  # fmt: skip
    text_encoder = tiny_clip_text_model(0)
    embeds = LearnedClassifierFreeSamplingEmbeddings(learnable=learnable, hidden_size=32, length=77)
    if learnable:
        randomize(embeds, 8, 1.0)
    pipe = VQDiffusionPipeline(
        vqvae=randomize(vqvae, 6).eval(), text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(folder),
        transformer=randomize(transformer, 7, 0.3).eval(), scheduler=diffusers.VQDiffusionScheduler(VQ_CLASSES + 1),
        learned_classifier_free_sampling_embeddings=embeds,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


class ToyEnv:
    """A 2-D point environment with the planner's interface: state (x, y, vx, vy), action (ax, ay)."""

    class Space:
        def __init__(self, n: int) -> None:
            self.shape = (n,)

    observation_space = Space(4)
    action_space = Space(2)

    def get_dataset(self) -> dict[str, Any]:
        rng = np.random.default_rng(0)
        return {
            "observations": rng.normal(0.5, 2.0, (64, 4)).astype(np.float32),
            "actions": rng.normal(-0.2, 0.5, (64, 2)).astype(np.float32),
            "rewards": rng.normal(size=64).astype(np.float32),
            "name": "toy",  # no statistics: ignored
        }


def diffusers_value_guided(env: Any) -> Any:
    import diffusers
    from diffusers.experimental import ValueGuidedRLPipeline

    torch.manual_seed(0)
    common = {"in_channels": 6, "out_channels": 6, "time_embedding_type": "positional", "use_timestep_embedding": True,
              "flip_sin_to_cos": False, "freq_shift": 1.0, "down_block_types": ("DownResnetBlock1D",) * 3,
              "block_out_channels": (8, 16, 32)}  # fmt: skip
    unet = diffusers.UNet1DModel(**common, out_block_type="OutConv1DBlock", mid_block_type="MidResTemporalBlock1D",
                                 up_block_types=("UpResnetBlock1D",) * 2, act_fn="mish",
                                 layers_per_block=1)  # fmt: skip
    value = diffusers.UNet1DModel(**{**common, "out_channels": 14}, up_block_types=(), out_block_type="ValueFunction",
                                  mid_block_type="ValueFunctionMidBlock1D", downsample_each_block=True,
                                  act_fn="mish", layers_per_block=1)  # fmt: skip
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=10, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                                        variance_type="fixed_small_log")  # fmt: skip
    pipe = ValueGuidedRLPipeline(value_function=randomize(value, 9, 0.05).eval(),
                                 unet=randomize(unet, 10, 0.05).eval(), scheduler=scheduler, env=env)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def _quiet_difflux_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="difflux")


@pytest.fixture
def cl() -> Any:
    """These helpers, as a fixture (test modules cannot import conftest under --import-mode=importlib)."""
    import sys

    return sys.modules[__name__]


@pytest.fixture(scope="session")
def ldm_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any, Path]]:
    """``{"text2img" | "superres": (diffusers pipeline, difflux pipeline from its folder, folder)}``."""
    root = tmp_path_factory.mktemp("ldm")
    out = {}
    for name, ref in (("text2img", diffusers_ldm_text2img(root / "_tok")), ("superres", diffusers_ldm_superres())):
        ref.save_pretrained(root / name)
        out[name] = (ref, load_difflux(root / name), root / name)
    return out


@pytest.fixture(scope="session")
def vq_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Any, Path]]:
    """``{"learned" | "empty": (diffusers pipeline in memory, difflux pipeline loaded from the folder Diffusers
    saved, folder)}``."""
    root = tmp_path_factory.mktemp("vq")
    out = {}
    for name, learnable in (("learned", True), ("empty", False)):
        ref = diffusers_vq_diffusion(root / f"_tok_{name}", learnable)
        ref.save_pretrained(root / name)  # the published layout; Diffusers 0.42.1 cannot load it back
        out[name] = (ref, load_difflux(root / name), root / name)
    return out


@pytest.fixture(scope="session")
def rl_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """``(diffusers pipeline, difflux pipeline from its folder with the same env, folder)``."""
    root = tmp_path_factory.mktemp("rl")
    env = ToyEnv()
    ref = diffusers_value_guided(env)
    ref.save_pretrained(root / "rl")
    return ref, load_difflux(root / "rl", env=env), root / "rl"
