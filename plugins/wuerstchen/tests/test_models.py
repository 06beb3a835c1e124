"""Würstchen models: Diffusers' saved files load in difflux and give the same outputs, and back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import max_diff
from difflux_wuerstchen import PaellaVQModel, WuerstchenDiffNeXt, WuerstchenPrior


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """Equal within ``tol`` relative to the output's magnitude (the prior divides by a small scale)."""
    return max_diff(a, b) <= tol * max(1.0, float(b.abs().max()))


CLASSES = {"prior": WuerstchenPrior, "decoder": WuerstchenDiffNeXt, "vqgan": PaellaVQModel}


def _load(oracle: torch.nn.Module, kind: str, folder: Path) -> Any:
    oracle.save_pretrained(folder / kind)
    return CLASSES[kind].from_pretrained(folder / kind).eval()


@torch.no_grad()
def test_prior_matches_diffusers(oracle_models: dict[str, Any], tmp_path: Path) -> None:
    ours = _load(oracle_models["prior"], "prior", tmp_path)
    g = torch.Generator().manual_seed(0)
    x, r, c = torch.randn(2, 2, 4, 4, generator=g), torch.tensor([0.3, 0.9]), torch.randn(2, 5, 32, generator=g)
    expected = oracle_models["prior"](x, r, c)
    assert close(ours(x, r, c), expected, 1e-4)
    assert expected.abs().max() > 1e-2  # a real output, not zeros
    with pytest.raises(ValueError, match="one noise ratio per sample"):
        ours(x, torch.tensor([0.5]), c)


@torch.no_grad()
def test_decoder_matches_diffusers(oracle_models: dict[str, Any], tmp_path: Path) -> None:
    ours = _load(oracle_models["decoder"], "decoder", tmp_path)
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([0.2, 0.7])
    effnet, clip = torch.randn(2, 2, 3, 3, generator=g), torch.randn(2, 5, 32, generator=g)
    expected = oracle_models["decoder"](x, r, effnet, clip)
    assert close(ours(x, r, effnet, clip), expected)
    a, b = ours(x, r, effnet, clip, return_noise=False)
    ea, eb = oracle_models["decoder"](x, r, effnet, clip, return_noise=False)
    assert close(a, ea) and max_diff(b, eb) < 1e-5


@torch.no_grad()
def test_vqgan_matches_diffusers_and_saves_for_it(oracle_models: dict[str, Any], tmp_path: Path) -> None:
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel as Oracle

    ours = _load(oracle_models["vqgan"], "vqgan", tmp_path)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = oracle_models["vqgan"].encode(image).latents
    assert close(ours.encode(image).latents, latents)
    assert close(ours.decode(latents).sample, oracle_models["vqgan"].decode(latents).sample)
    quantised = oracle_models["vqgan"].decode(latents, force_not_quantize=False).sample
    assert close(ours.decode(latents, force_not_quantize=False).sample, quantised)
    ours.save_pretrained(tmp_path / "back")
    again = Oracle.from_pretrained(tmp_path / "back").eval()
    assert max_diff(again.decode(latents).sample, ours.decode(latents).sample) < 1e-6
