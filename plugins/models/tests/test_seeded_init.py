"""Same seed, same weights: every model class, built fresh under one seed in difflux and in
diffusers, has the same state-dict keys in the same order, the same parameter order, and
bit-identical tensors (submodules are created and registered in Diffusers' order, with
Diffusers' initialisers)."""

from __future__ import annotations

from typing import Any

import difflux_models
import diffusers
import pytest
import torch

SD_LIKE: dict[str, Any] = {  # SD 1.x layout, scaled down
    "sample_size": 8,
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 2,
    "norm_num_groups": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 12,
    "attention_head_dim": 2,
}
SDXL_LIKE: dict[str, Any] = {  # SDXL base layout, scaled down
    "sample_size": 8,
    "block_out_channels": (8, 16, 16),
    "layers_per_block": 2,
    "norm_num_groups": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 3),
    "attention_head_dim": (2, 4, 8),
    "use_linear_projection": True,
    "cross_attention_dim": 12,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 4,
    "projection_class_embeddings_input_dim": 8 + 6 * 4,
}
UNET2D: dict[str, Any] = {
    "sample_size": 8,
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": 4,
}
VAE: dict[str, Any] = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 16,
}
DIT: dict[str, Any] = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "num_embeds_ada_norm": 10,
}
PIXART: dict[str, Any] = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "out_channels": 8,
    "num_layers": 2,
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "cross_attention_dim": 24,
    "caption_channels": 12,
}
CONTINUOUS: dict[str, Any] = {
    "in_channels": 16,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "norm_num_groups": 4,
}

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # UNet2DConditionModel
    "sd1": ("UNet2DConditionModel", SD_LIKE),
    "sd2": ("UNet2DConditionModel", {**SD_LIKE, "use_linear_projection": True, "attention_head_dim": (2, 4, 4, 4)}),
    "sdxl": ("UNet2DConditionModel", SDXL_LIKE),
    "sdxl_refiner_like": (
        "UNet2DConditionModel",
        {**SDXL_LIKE, "transformer_layers_per_block": 2, "projection_class_embeddings_input_dim": 8 + 5 * 4},
    ),
    "unet_cond_class_proj_lcm": (
        "UNet2DConditionModel",
        {
            **SD_LIKE,
            "class_embed_type": "projection",
            "projection_class_embeddings_input_dim": 5,
            "time_cond_proj_dim": 6,
            "encoder_hid_dim": 10,
        },
    ),
    "unet_cond_fourier_mid_none": (
        "UNet2DConditionModel",
        {**SD_LIKE, "time_embedding_type": "fourier", "mid_block_type": None, "num_class_embeds": 3},
    ),
    "x2_latent_upscaler": (
        "UNet2DConditionModel",
        {
            "sample_size": 16,
            "act_fn": "gelu",
            "attention_head_dim": (8, 8, 16, 16),
            "block_out_channels": (32, 32, 64, 64),
            "conv_in_kernel": 1,
            "conv_out_kernel": 1,
            "cross_attention_dim": 24,
            "down_block_types": (
                "KDownBlock2D",
                "KCrossAttnDownBlock2D",
                "KCrossAttnDownBlock2D",
                "KCrossAttnDownBlock2D",
            ),
            "up_block_types": ("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"),
            "in_channels": 8,
            "out_channels": 5,
            "mid_block_type": None,
            "norm_num_groups": None,
            "time_cond_proj_dim": 40,
            "time_embedding_type": "fourier",
            "timestep_post_act": "gelu",
        },
    ),
    "kandinsky22_like": (
        "UNet2DConditionModel",
        {
            "sample_size": 8,
            "out_channels": 8,
            "block_out_channels": (16, 32),
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
            "cross_attention_dim": 12,
            "attention_head_dim": 8,
            "encoder_hid_dim": 10,
            "encoder_hid_dim_type": "image_proj",
            "addition_embed_type": "image_hint",
        },
    ),
    "if_like": (
        "UNet2DConditionModel",
        {
            "sample_size": 8,
            "in_channels": 3,
            "out_channels": 6,
            "block_out_channels": (16, 32),
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
            "cross_attention_dim": 32,
            "attention_head_dim": 8,
            "encoder_hid_dim": 20,
            "addition_embed_type": "text",
            "addition_embed_type_num_heads": 2,
            "cross_attention_norm": "group_norm",
            "only_cross_attention": True,
        },
    ),
    "kandinsky21_like": (
        "UNet2DConditionModel",
        {
            **SD_LIKE,
            "encoder_hid_dim": 10,
            "encoder_hid_dim_type": "text_image_proj",
            "addition_embed_type": "text_image",
            "class_embed_type": "identity",
        },
    ),
    # UNet2DModel
    "ddpm": ("UNet2DModel", UNET2D),
    "ddpm_cifar_like": (
        "UNet2DModel",
        {
            **UNET2D,
            "block_out_channels": (8, 16, 16, 16),
            "layers_per_block": 2,
            "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        },
    ),
    "ldm_scale_shift": ("UNet2DModel", {**UNET2D, "resnet_time_scale_shift": "scale_shift", "num_class_embeds": 4}),
    "fourier": ("UNet2DModel", {**UNET2D, "time_embedding_type": "fourier"}),
    "resnet_resampling": (
        "UNet2DModel",
        {
            **UNET2D,
            "down_block_types": ("AttnDownBlock2D", "AttnDownBlock2D"),
            "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D"),
            "downsample_type": "resnet",
            "upsample_type": "resnet",
            "layers_per_block": 2,
        },
    ),
    "learned_time_class_timestep": (
        "UNet2DModel",
        {**UNET2D, "time_embedding_type": "learned", "num_train_timesteps": 50, "class_embed_type": "timestep"},
    ),
    "consistency_models": (
        "UNet2DModel",
        {
            **UNET2D,
            "block_out_channels": (8, 16, 16),
            "down_block_types": ("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"),
            "downsample_type": "resnet",
            "upsample_type": "resnet",
            "layers_per_block": 2,
            "num_class_embeds": 10,
            "resnet_time_scale_shift": "scale_shift",
        },
    ),
    "ncsnpp": (
        "UNet2DModel",
        {
            "sample_size": 8,
            "block_out_channels": (32, 64, 64),
            "down_block_types": ("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"),
            "up_block_types": ("SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"),
            "time_embedding_type": "fourier",
            "norm_num_groups": None,
            "attention_head_dim": None,
            "layers_per_block": 2,
        },
    ),
    # autoencoders
    "vae_sd": ("AutoencoderKL", VAE),
    "vae_sdxl_like": (
        "AutoencoderKL",
        {
            **VAE,
            "block_out_channels": (8, 8, 16, 16),
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "layers_per_block": 2,
        },
    ),
    "vae_no_mid_attention": ("AutoencoderKL", {**VAE, "mid_block_add_attention": False, "use_quant_conv": False}),
    "vq": ("VQModel", {**VAE, "latent_channels": 3, "num_vq_embeddings": 16}),
    "vq_embed_dim": ("VQModel", {**VAE, "latent_channels": 3, "num_vq_embeddings": 16, "vq_embed_dim": 5}),
    "movq": (
        "VQModel",
        {
            "block_out_channels": (32, 64),
            "down_block_types": ("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
            "up_block_types": ("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
            "latent_channels": 4,
            "norm_num_groups": 8,
            "norm_type": "spatial",
            "num_vq_embeddings": 16,
            "vq_embed_dim": 4,
        },
    ),
    # UNet1DModel
    "dance": (
        "UNet1DModel",
        {
            "sample_size": 64,
            "in_channels": 2,
            "out_channels": 2,
            "extra_in_channels": 16,
            "time_embedding_dim": 16,
            "block_out_channels": (32, 32, 64),
        },
    ),
    "rl_planner": (
        "UNet1DModel",
        {
            "block_out_channels": (16, 32, 64),
            "in_channels": 6,
            "out_channels": 6,
            "time_embedding_type": "positional",
            "use_timestep_embedding": True,
            "flip_sin_to_cos": False,
            "freq_shift": 1.0,
            "out_block_type": "OutConv1DBlock",
            "mid_block_type": "MidResTemporalBlock1D",
            "down_block_types": ("DownResnetBlock1D",) * 3,
            "up_block_types": ("UpResnetBlock1D",) * 2,
            "act_fn": "swish",
            "layers_per_block": 2,
        },
    ),
    "rl_value_function": (
        "UNet1DModel",
        {
            "block_out_channels": (16, 32, 64),
            "in_channels": 6,
            "out_channels": 6,
            "time_embedding_type": "positional",
            "use_timestep_embedding": True,
            "flip_sin_to_cos": False,
            "freq_shift": 1.0,
            "down_block_types": ("DownResnetBlock1D",) * 3,
            "up_block_types": (),
            "mid_block_type": "ValueFunctionMidBlock1D",
            "out_block_type": "ValueFunction",
            "act_fn": "mish",
            "layers_per_block": 1,
            "downsample_each_block": True,
            "sample_size": 16,
        },
    ),
    "kandinsky3": (
        "Kandinsky3UNet",
        {
            "time_embedding_dim": 16,
            "groups": 4,
            "attention_head_dim": 4,
            "layers_per_block": 2,
            "block_out_channels": (16, 16, 32, 32),
            "cross_attention_dim": 12,
            "encoder_hid_dim": 10,
        },
    ),
    # transformers
    "prior_karlo": (
        "PriorTransformer",
        {"num_attention_heads": 2, "attention_head_dim": 4, "num_layers": 2, "embedding_dim": 8, "num_embeddings": 5},
    ),
    "prior_kandinsky": (
        "PriorTransformer",
        {
            "num_attention_heads": 2,
            "attention_head_dim": 4,
            "num_layers": 1,
            "embedding_dim": 8,
            "num_embeddings": 5,
            "norm_in_type": "layer",
            "embedding_proj_norm_type": "layer",
            "clip_embed_dim": 6,
        },
    ),
    "dit": ("DiTTransformer2DModel", DIT),
    "dit_learn_sigma": ("DiTTransformer2DModel", {**DIT, "out_channels": 8, "activation_fn": "gelu"}),
    "pixart": ("PixArtTransformer2DModel", PIXART),
    "pixart_sizes": ("PixArtTransformer2DModel", {**PIXART, "use_additional_conditions": True}),
    "t2d_conv": ("Transformer2DModel", {**CONTINUOUS, "cross_attention_dim": 12}),
    "t2d_linear": ("Transformer2DModel", {**CONTINUOUS, "use_linear_projection": True, "num_layers": 2}),
    "t2d_discrete": (
        "Transformer2DModel",
        {
            "num_vector_embeds": 9,
            "sample_size": 4,
            "num_attention_heads": 2,
            "attention_head_dim": 8,
            "cross_attention_dim": 12,
            "num_embeds_ada_norm": 20,
            "norm_type": "ada_norm",
        },
    ),
}


def build(module: Any, class_name: str, config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model: torch.nn.Module = getattr(module, class_name)(**config)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_same_seed_same_weights(case: str) -> None:
    class_name, config = CASES[case]
    reference = build(diffusers, class_name, config)
    model = build(difflux_models, class_name, config)
    expected, actual = reference.state_dict(), model.state_dict()
    assert list(actual) == list(expected), "state-dict keys or their order differ from diffusers'"
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in reference.named_parameters()]
    different = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not different, f"{len(different)} tensors differ from diffusers' under the same seed, first {different[:3]}"
    # the seed is what makes them equal: another seed gives other weights
    other = build(difflux_models, class_name, config, seed=1).state_dict()
    assert any(not torch.equal(other[k], actual[k]) for k in actual)
