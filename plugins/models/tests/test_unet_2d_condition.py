"""UNet2DConditionModel: two-way parity with diffusers on tiny configs covering SD 1.x / 2.x / SDXL / LCM options."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from difflux.testing import ComponentConformance
from difflux_models import UNet2DConditionModel
from difflux_models.layers import AttnProcessor
from diffusers import UNet2DConditionModel as DUNet

BASE: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 12,
    "attention_head_dim": 2,
}

CASES: dict[str, dict[str, Any]] = {
    "sd1": {},
    "sd2_linear_upcast": {"use_linear_projection": True, "upcast_attention": True, "attention_head_dim": (2, 4)},
    "sdxl_text_time": {
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 4,
        "projection_class_embeddings_input_dim": 8 + 6 * 4,
        "attention_head_dim": (2, 4),
    },
    "lcm_cond_proj": {"time_cond_proj_dim": 6},
    "three_blocks_only_cross": {
        "block_out_channels": (8, 16, 16),
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "only_cross_attention": (True, False, False),
        "layers_per_block": (1, 2, 1),
        "cross_attention_dim": (12, 12, 12),
    },
    "class_timestep": {"class_embed_type": "timestep"},
    "class_projection_concat": {
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": 5,
        "class_embeddings_concat": True,
    },
    "num_class_embeds": {"num_class_embeds": 3, "resnet_time_scale_shift": "scale_shift"},
    "encoder_hid_proj": {"encoder_hid_dim": 10, "time_embedding_act_fn": "silu", "timestep_post_act": "silu"},
    "fourier_center": {"time_embedding_type": "fourier", "center_input_sample": True, "flip_sin_to_cos": False},
    "mid_none_kernels": {"mid_block_type": None, "conv_in_kernel": 1, "conv_out_kernel": 1, "freq_shift": 1},
    "reverse_transformer_layers": {
        "transformer_layers_per_block": (2, 1),
        "reverse_transformer_layers_per_block": ((1, 1), (3, 1)),
    },
}


def make_inputs(config: dict[str, Any], batch: int = 2, size: int = 8) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    inputs: dict[str, Any] = {
        "sample": torch.randn(batch, 4, size, size, generator=g),
        "timestep": torch.tensor([10, 500][:batch]),
        "encoder_hidden_states": torch.randn(batch, 5, config.get("encoder_hid_dim") or 12, generator=g),
    }
    if config.get("addition_embed_type") == "text_time":
        inputs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, 8, generator=g),
            "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * batch),
        }
    if config.get("time_cond_proj_dim"):
        inputs["timestep_cond"] = torch.randn(batch, config["time_cond_proj_dim"], generator=g)
    if config.get("class_embed_type") == "timestep" or config.get("num_class_embeds"):
        inputs["class_labels"] = torch.tensor([1, 2][:batch])
    if config.get("class_embed_type") == "projection":
        inputs["class_labels"] = torch.randn(batch, 5, generator=g)
    if config.get("time_embedding_type") == "fourier":
        inputs["timestep"] = torch.tensor([0.3, 1.7][:batch])
    return inputs


@pytest.mark.parametrize("case", list(CASES))
def test_parity(parity: Any, case: str) -> None:
    config = {**BASE, **CASES[case]}
    parity(DUNet, UNet2DConditionModel, config, lambda: make_inputs(config))


def test_controlnet_residuals_masks_and_scale(parity: Any, kit: Any) -> None:
    result = parity(DUNet, UNet2DConditionModel, BASE, lambda: make_inputs(BASE), reverse=False)
    g = torch.Generator().manual_seed(3)
    shapes = [(2, 16, 8, 8), (2, 16, 8, 8), (2, 16, 4, 4), (2, 32, 4, 4)]
    down = tuple(torch.randn(s, generator=g) for s in shapes)
    mid = torch.randn(2, 32, 4, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    extra = {
        "down_block_additional_residuals": down,
        "mid_block_additional_residual": mid,
        "encoder_attention_mask": mask,
        "cross_attention_kwargs": {"scale": 0.5},
    }
    with torch.no_grad():
        expected = result.reference(**make_inputs(BASE), **extra).sample
        actual = result.model(**make_inputs(BASE), **extra).sample
        kit.assert_close(actual, expected)
        # T2I-Adapter: residuals added inside the down blocks.
        adapter = (torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 32, 4, 4, generator=g))
        expected = result.reference(**make_inputs(BASE), down_intrablock_additional_residuals=list(adapter)).sample
        actual = result.model(**make_inputs(BASE), down_intrablock_additional_residuals=adapter).sample
        kit.assert_close(actual, expected)
        plain = result.model(**make_inputs(BASE), return_dict=False)
        assert isinstance(plain, tuple) and plain[0].shape == (2, 4, 8, 8)


def test_odd_size_forwards_upsample_size(parity: Any) -> None:
    parity(DUNet, UNet2DConditionModel, BASE, lambda: make_inputs(BASE, size=7), reverse=False)


def test_processors_and_fused_projections(parity: Any, kit: Any) -> None:
    result = parity(DUNet, UNet2DConditionModel, BASE, lambda: make_inputs(BASE), reverse=False)
    model = result.model
    procs = model.attn_processors
    assert set(procs) == set(result.reference.attn_processors)
    model.set_attn_processor(AttnProcessor())
    model.fuse_qkv_projections()
    with torch.no_grad():
        kit.assert_close(model(**make_inputs(BASE)).sample, result.expected)
    model.unfuse_qkv_projections()
    assert set(model.state_dict()) == set(result.reference.state_dict())
    model.set_attention_backend("reference")
    with torch.no_grad():
        kit.assert_close(model(**make_inputs(BASE)).sample, result.expected)


def test_scalar_timestep_and_missing_inputs(parity: Any, kit: Any) -> None:
    config = {**BASE, **CASES["sdxl_text_time"]}
    result = parity(DUNet, UNet2DConditionModel, config, lambda: make_inputs(config), reverse=False)
    inputs = make_inputs(config)
    inputs["timestep"] = 10
    with torch.no_grad():
        kit.assert_close(
            result.model(**inputs).sample, result.reference(**make_inputs(config) | {"timestep": 10}).sample
        )
    inputs.pop("added_cond_kwargs")
    with pytest.raises(ValueError, match="text_embeds and time_ids"):
        result.model(**inputs)


class TestUNet2DConditionConformance(ComponentConformance):
    component_class = UNet2DConditionModel
    atol = 1e-5  # the same weights read from shards may take other kernel paths (last-bit differences)

    def make_component(self) -> UNet2DConditionModel:
        torch.manual_seed(0)
        return UNet2DConditionModel(**BASE)

    def make_inputs(self) -> dict[str, Any]:
        return make_inputs(BASE, batch=1)


# stabilityai/sd-x2-latent-upscaler's UNet, scaled down: K-diffusion blocks, no mid block, no output
# norm, Fourier time embedding, timestep_cond; block widths keep its structure (the first up block
# is as wide as the time embedding, the second changes width).
K_UPSCALER: dict[str, Any] = {
    "sample_size": 16,
    "act_fn": "gelu",
    "attention_head_dim": (8, 8, 16, 16),
    "block_out_channels": (32, 32, 64, 64),
    "conv_in_kernel": 1,
    "conv_out_kernel": 1,
    "cross_attention_dim": 24,
    "down_block_types": ("KDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D", "KCrossAttnDownBlock2D"),
    "up_block_types": ("KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KCrossAttnUpBlock2D", "KUpBlock2D"),
    "in_channels": 8,
    "out_channels": 5,
    "layers_per_block": 2,
    "mid_block_type": None,
    "norm_num_groups": None,
    "resnet_time_scale_shift": "scale_shift",
    "time_cond_proj_dim": 40,
    "time_embedding_type": "fourier",
    "timestep_post_act": "gelu",
}


def k_inputs() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "sample": torch.randn(2, 8, 16, 16, generator=g),
        "timestep": torch.tensor([0.5, -1.0]),
        "encoder_hidden_states": torch.randn(2, 5, 24, generator=g),
        "timestep_cond": torch.randn(2, 40, generator=g),
    }


def test_x2_latent_upscaler_k_blocks(parity: Any, kit: Any) -> None:
    result = parity(DUNet, UNet2DConditionModel, K_UPSCALER, k_inputs)
    assert result.actual.shape == (2, 5, 16, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = result.reference(**k_inputs(), encoder_attention_mask=mask).sample
        kit.assert_close(result.model(**k_inputs(), encoder_attention_mask=mask).sample, expected)


def test_norm_groups_none_needs_k_blocks() -> None:
    with pytest.raises(ValueError, match="K-diffusion blocks only"):
        UNet2DConditionModel(**{**BASE, "norm_num_groups": None})


# The simple-cross-attention (added key/value) UNets, scaled down from the published layouts:
# unCLIP decoder, Kandinsky 2.1 / 2.2 (and its ControlNet), DeepFloyd IF.
SIMPLE: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 8,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "cross_attention_dim": 12,
    "attention_head_dim": 8,
    "resnet_time_scale_shift": "scale_shift",
}

#: case -> (config changes, added_cond_kwargs shapes, encoder_hidden_states width)
SIMPLE_CASES: dict[str, tuple[dict[str, Any], dict[str, tuple[int, ...]], int]] = {
    "unclip_decoder": ({"class_embed_type": "identity", "in_channels": 3, "out_channels": 6}, {}, 12),
    "kandinsky21": (
        {"encoder_hid_dim": 10, "encoder_hid_dim_type": "text_image_proj", "addition_embed_type": "text_image"},
        {"image_embeds": (2, 12), "text_embeds": (2, 12)},
        10,
    ),
    "kandinsky22": (
        {"encoder_hid_dim": 10, "encoder_hid_dim_type": "image_proj", "addition_embed_type": "image"},
        {"image_embeds": (2, 10)},
        12,
    ),
    "kandinsky22_controlnet_hint": (
        {
            "in_channels": 8,
            "encoder_hid_dim": 10,
            "encoder_hid_dim_type": "image_proj",
            "addition_embed_type": "image_hint",
        },
        {"image_embeds": (2, 10), "hint": (2, 3, 64, 64)},
        12,
    ),
    "deepfloyd_if": (
        {
            "in_channels": 3,
            "out_channels": 6,
            "encoder_hid_dim": 20,
            "encoder_hid_dim_type": "text_proj",
            "addition_embed_type": "text",
            "addition_embed_type_num_heads": 2,
            "cross_attention_norm": "group_norm",
            "cross_attention_dim": 32,
            "resnet_skip_time_act": True,
            "resnet_out_scale_factor": 1.414,
            "time_embedding_act_fn": "gelu",
        },
        {},
        20,
    ),
    "only_cross_mid_only_cross": (
        {"only_cross_attention": True, "mid_block_only_cross_attention": False, "cross_attention_dim": 16},
        {},
        16,
    ),
}


def simple_inputs(case: str) -> dict[str, Any]:
    extra, added, width = SIMPLE_CASES[case]
    config = {**SIMPLE, **extra}
    g = torch.Generator().manual_seed(0)
    channels = config["in_channels"] - (4 if "hint" in added else 0)
    inputs: dict[str, Any] = {
        "sample": torch.randn(2, channels, 8, 8, generator=g),
        "timestep": torch.tensor([3, 500]),
        "encoder_hidden_states": torch.randn(2, 5, width, generator=g),
        "added_cond_kwargs": {k: torch.randn(*shape, generator=g) for k, shape in added.items()},
    }
    if config.get("class_embed_type") == "identity":
        inputs["class_labels"] = torch.randn(2, 64, generator=g)  # already time-embedding wide
    return inputs


@pytest.mark.parametrize("case", list(SIMPLE_CASES))
def test_simple_cross_attention_layouts(parity: Any, case: str) -> None:
    config = {**SIMPLE, **SIMPLE_CASES[case][0]}
    parity(DUNet, UNet2DConditionModel, config, lambda: simple_inputs(case))


def test_simple_cross_attention_mask(parity: Any, kit: Any) -> None:
    """The added-KV attention masks only the encoder positions (unCLIP passes it as attention_mask)."""
    config = {**SIMPLE, **SIMPLE_CASES["unclip_decoder"][0]}
    result = parity(DUNet, UNet2DConditionModel, config, lambda: simple_inputs("unclip_decoder"), reverse=False)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        for key in ("attention_mask", "encoder_attention_mask"):
            expected = result.reference(**simple_inputs("unclip_decoder"), **{key: mask}).sample
            kit.assert_close(result.model(**simple_inputs("unclip_decoder"), **{key: mask}).sample, expected)


def test_added_cond_kwargs_are_checked() -> None:
    config = {**SIMPLE, **SIMPLE_CASES["kandinsky22"][0]}
    torch.manual_seed(0)
    model = UNet2DConditionModel(**config)
    inputs = simple_inputs("kandinsky22")
    inputs["added_cond_kwargs"] = {}
    with pytest.raises(ValueError, match="image_embeds"):
        model(**inputs)
    with pytest.raises(ValueError, match="unknown addition_embed_type"):
        UNet2DConditionModel(**{**config, "addition_embed_type": "nope"})
