"""AutoencoderKL: parity with diffusers (encode, sample with a generator, decode), slicing, tiling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux.testing import ComponentConformance
from difflux_models import AutoencoderKL
from diffusers import AutoencoderKL as DAutoencoderKL
from safetensors.torch import load_file, save_file

BASE: dict[str, Any] = {
    "block_out_channels": (8, 16),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 16,
    "layers_per_block": 1,
}

CASES: dict[str, dict[str, Any]] = {
    "sd": {},
    "no_quant_convs": {"use_quant_conv": False, "use_post_quant_conv": False, "shift_factor": 0.1},
    "no_mid_attention": {"mid_block_add_attention": False, "layers_per_block": 2, "force_upcast": False},
    "three_levels": {
        "block_out_channels": (8, 8, 16),
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "scaling_factor": 0.13025,
    },
}


def image(batch: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


@pytest.mark.parametrize("case", list(CASES))
def test_parity(parity: Any, kit: Any, case: str) -> None:
    config = {**BASE, **CASES[case]}
    result = parity(DAutoencoderKL, AutoencoderKL, config, lambda: {"sample": image()})
    ref, model = result.reference, result.model
    x = image()
    with torch.no_grad():
        want = ref.encode(x).latent_dist
        got = model.encode(x).latent_dist
        kit.assert_close(got.mean, want.mean)
        kit.assert_close(got.std, want.std)
        kit.assert_close(got.mode(), want.mode())
        kit.assert_close(got.sample(torch.Generator().manual_seed(7)), want.sample(torch.Generator().manual_seed(7)))
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        gens_ref = [torch.Generator().manual_seed(s) for s in (1, 2)]
        kit.assert_close(got.sample(gens), want.sample(gens_ref))
        kit.assert_close(got.kl(), want.kl(), 1e-3)
        z = want.mode()
        kit.assert_close(model.decode(z).sample, ref.decode(z).sample)
        kit.assert_close(
            model(x, sample_posterior=True, generator=torch.Generator().manual_seed(3)).sample,
            ref(x, sample_posterior=True, generator=torch.Generator().manual_seed(3)).sample,
        )
    for key in ("scaling_factor", "shift_factor", "force_upcast", "use_quant_conv", "mid_block_add_attention"):
        assert model.config[key] == ref.config[key]


def test_slicing_gives_identical_results(parity: Any) -> None:
    result = parity(DAutoencoderKL, AutoencoderKL, BASE, lambda: {"sample": image()}, reverse=False)
    model = result.model
    x = image(batch=3)
    with torch.no_grad():
        full_latents = model.encode(x).latent_dist.mean
        full = model.decode(full_latents).sample
        model.enable_slicing()
        sliced_latents = model.encode(x).latent_dist.mean
        sliced = model.decode(full_latents).sample
        model.disable_slicing()
    # Same maths per image; only batch-size-dependent kernel choices differ (float rounding).
    torch.testing.assert_close(sliced_latents, full_latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(sliced, full, atol=1e-5, rtol=0)


def test_tiling_matches_diffusers_tiling(parity: Any, kit: Any) -> None:
    result = parity(DAutoencoderKL, AutoencoderKL, BASE, lambda: {"sample": image()}, reverse=False)
    ref, model = result.reference, result.model
    x = image(batch=1, size=40, seed=5)
    with torch.no_grad():
        untiled = model.decode(model.encode(x).latent_dist.mode()).sample
        ref.enable_tiling()
        model.enable_tiling()
        want_latents = ref.encode(x).latent_dist.mode()
        got_latents = model.encode(x).latent_dist.mode()
        kit.assert_close(got_latents, want_latents)
        z = want_latents
        want = ref.decode(z).sample
        got = model.decode(z).sample
        kit.assert_close(got, want)
        assert got.shape == untiled.shape
        model.disable_tiling()
        kit.assert_close(model.decode(model.encode(x).latent_dist.mode()).sample, untiled, 1e-5)


def test_legacy_attention_keys_load(tmp_path: Path, parity: Any, kit: Any) -> None:
    result = parity(DAutoencoderKL, AutoencoderKL, BASE, lambda: {"sample": image()}, reverse=False)
    file = result.folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(file))
    renamed = {}
    for key, value in tensors.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if ".attentions.0." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
                if key.endswith("weight"):
                    value = value[:, :, None, None]
        renamed[key] = value
    assert any(".query." in k for k in renamed)
    save_file(renamed, str(file))
    legacy = AutoencoderKL.from_pretrained(result.folder)
    with torch.no_grad():
        kit.assert_close(legacy(image()).sample, result.expected)


class TestAutoencoderKLConformance(ComponentConformance):
    component_class = AutoencoderKL
    atol = 1e-5

    def make_component(self) -> AutoencoderKL:
        torch.manual_seed(0)
        return AutoencoderKL(**BASE)

    def make_inputs(self) -> dict[str, Any]:
        return {"sample": image(batch=1)}
