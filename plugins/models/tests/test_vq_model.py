"""VQModel: two-way parity with diffusers; quantised and unquantised decoding, codebook lookup."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from difflux.testing import ComponentConformance
from difflux_models import VQModel
from diffusers import VQModel as DVQModel

BASE: dict[str, Any] = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 3,
    "norm_num_groups": 4,
    "num_vq_embeddings": 16,
    "sample_size": 16,
}


def image(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "extra", [{}, {"vq_embed_dim": 5, "mid_block_add_attention": False}, {"lookup_from_codebook": True}]
)
def test_parity(parity: Any, kit: Any, extra: dict[str, Any]) -> None:
    config = {**BASE, **extra}
    result = parity(DVQModel, VQModel, config, lambda: {"sample": image()})
    ref, model = result.reference, result.model
    with torch.no_grad():
        h = ref.encode(image()).latents
        kit.assert_close(model.encode(image()).latents, h)
        kit.assert_close(model.decode(h).sample, ref.decode(h).sample)
        kit.assert_close(model.decode(h).commit_loss, ref.decode(h).commit_loss)
        if not config.get("lookup_from_codebook"):
            kit.assert_close(
                model.decode(h, force_not_quantize=True).sample, ref.decode(h, force_not_quantize=True).sample
            )
        else:
            dim = config.get("vq_embed_dim") or 3
            indices = torch.tensor([[1, 5, 7, 2] * 4] * 2)
            shape = (2, 4, 4, dim)
            kit.assert_close(
                model.decode(indices, force_not_quantize=True, shape=shape).sample,
                ref.decode(indices, force_not_quantize=True, shape=shape).sample,
            )
        dec, loss = model(image(), return_dict=False)
        assert dec.shape == (2, 3, 16, 16) and loss.ndim == 0


class TestVQModelConformance(ComponentConformance):
    component_class = VQModel
    atol = 1e-5

    def make_component(self) -> VQModel:
        torch.manual_seed(0)
        return VQModel(**BASE)

    def make_inputs(self) -> dict[str, Any]:
        return {"sample": image(batch=1)}


# kandinsky-community/kandinsky-2-2-decoder's "movq", scaled down: spatial-norm decoder (every norm
# modulated by the quantized latent), attention encoder / decoder blocks. SpatialNorm has 32 groups.
MOVQ: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
    "up_block_types": ("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "norm_num_groups": 8,
    "norm_type": "spatial",
    "num_vq_embeddings": 16,
    "vq_embed_dim": 4,
    "sample_size": 16,
    "layers_per_block": 1,
}


@pytest.mark.parametrize(
    "extra",
    [{}, {"norm_type": "group", "up_block_types": ("AttnUpDecoderBlock2D", "AttnUpDecoderBlock2D")}],
    ids=["movq_spatial", "attention_blocks_group_norm"],
)
def test_movq_parity(parity: Any, kit: Any, extra: dict[str, Any]) -> None:
    result = parity(DVQModel, VQModel, {**MOVQ, **extra}, lambda: {"sample": image()})
    latents = result.reference.encode(image()).latents
    with torch.no_grad():
        kit.assert_close(result.model.decode(latents).sample, result.reference.decode(latents).sample)
        kit.assert_close(
            result.model.decode(latents, force_not_quantize=True).sample,
            result.reference.decode(latents, force_not_quantize=True).sample,
        )
