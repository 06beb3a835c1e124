"""GLIGEN building blocks against Diffusers: UNet2DConditionModel with attention_type "gated" /
"gated-text-image" (gated self-attention fusers, the position net) and CLIPImageProjection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_models import CLIPImageProjection, UNet2DConditionModel

CONFIG: dict[str, Any] = {
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


def _gligen_kwargs(kind: str, batch: int = 2, boxes: int = 3) -> dict[str, Any]:
    g = torch.Generator().manual_seed(4)
    masks = torch.tensor([[1.0, 1.0, 0.0]] * batch)
    box = torch.rand(batch, boxes, 4, generator=g)
    if kind == "gated":
        return {"boxes": box, "masks": masks, "positive_embeddings": torch.randn(batch, boxes, 12, generator=g)}
    return {
        "boxes": box,
        "masks": masks,
        "phrases_masks": torch.tensor([[1.0, 0.0, 0.0]] * batch),
        "image_masks": torch.tensor([[0.0, 1.0, 0.0]] * batch),
        "phrases_embeddings": torch.randn(batch, boxes, 12, generator=g),
        "image_embeddings": torch.randn(batch, boxes, 12, generator=g),
    }


def _inputs(kind: str | None) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {
        "sample": torch.randn(2, 4, 8, 8, generator=g),
        "timestep": torch.tensor([10, 500]),
        "encoder_hidden_states": torch.randn(2, 5, 12, generator=g),
    }
    if kind is not None:
        out["cross_attention_kwargs"] = {"gligen": _gligen_kwargs(kind)}
    return out


@pytest.mark.parametrize("kind", ["gated", "gated-text-image"])
def test_gligen_unet_two_way_parity(kind: str, tmp_path: Path, kit: Any) -> None:
    import diffusers

    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**CONFIG, attention_type=kind).eval()
    kit.perturb_(ref, 1)
    with torch.no_grad():  # open the gates (a fresh GLIGEN layer starts closed: tanh(0) = 0)
        for name, p in ref.named_parameters():
            if name.endswith(("alpha_attn", "alpha_dense")):
                p.fill_(0.7)
    ref.save_pretrained(tmp_path / "d")
    ours = UNet2DConditionModel.from_pretrained(tmp_path / "d").eval()
    assert set(ours.state_dict()) == set(ref.state_dict())
    assert any(k.startswith("position_net.") for k in ours.state_dict())
    assert any(".fuser.alpha_attn" in k for k in ours.state_dict())
    with torch.no_grad():
        expected = ref(**_inputs(kind)).sample
        actual = ours(**_inputs(kind)).sample
        plain = ours(**_inputs(None)).sample
    kit.assert_close(actual, expected)
    assert (actual - plain).abs().max() > 1e-3  # the grounding tokens change the prediction
    ours.save_pretrained(tmp_path / "x")
    back, info = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "x", output_loading_info=True)
    assert not any(info.values()), info
    with torch.no_grad():
        kit.assert_close(back(**_inputs(kind)).sample, expected)


def test_gligen_inputs_need_a_gligen_unet_and_the_right_embeddings(tmp_path: Path) -> None:
    torch.manual_seed(0)
    plain = UNet2DConditionModel(**CONFIG)
    with pytest.raises(ValueError, match="attention_type='gated'"):
        plain(**_inputs("gated"))
    with pytest.raises(ValueError, match="attention_type 'boxes'"):
        UNet2DConditionModel(**CONFIG, attention_type="boxes")
    text_only = UNet2DConditionModel(**CONFIG, attention_type="gated")
    with pytest.raises(ValueError, match="positive_embeddings"):
        text_only(**_inputs("gated-text-image"))


def test_clip_image_projection_round_trip(tmp_path: Path, kit: Any) -> None:
    import diffusers

    torch.manual_seed(0)
    ref = diffusers.pipelines.stable_diffusion.CLIPImageProjection(hidden_size=12).eval()
    ref.save_pretrained(tmp_path / "d")
    ours = CLIPImageProjection.from_pretrained(tmp_path / "d")
    x = kit.randn(2, 12)
    with torch.no_grad():
        kit.assert_close(ours(x), ref(x), atol=1e-6)
    ours.save_pretrained(tmp_path / "x")
    back = diffusers.pipelines.stable_diffusion.CLIPImageProjection.from_pretrained(tmp_path / "x")
    with torch.no_grad():
        kit.assert_close(back(x), ref(x), atol=1e-6)
