"""Tiny Würstchen components built with Diffusers (the test-only oracle).

Diffusers 0.42.1 cannot reload Würstchen folders (its classes are not exported at the top level), so
the oracle pipelines are built in memory from these modules; difflux loads the same modules' saved
files. Sizes follow Diffusers' fast tests, scaled down further.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

PRIOR: dict[str, Any] = {"c_in": 2, "c": 8, "depth": 2, "c_cond": 32, "c_r": 8, "nhead": 2}
DECODER: dict[str, Any] = {
    "c_cond": 32,
    "c_hidden": [8, 16],
    "nhead": [-1, 2],
    "blocks": [1, 1],
    "level_config": ["CT", "CTA"],
    "inject_effnet": [False, True],
    "effnet_embd": 2,
    "clip_embd": 32,
    "c_r": 8,
    "c_in": 4,
    "c_out": 4,
}
VQGAN: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "up_down_scale_factor": 2,
    "levels": 2,
    "bottleneck_blocks": 1,
    "embed_dim": 16,
    "latent_channels": 4,
    "num_vq_embeddings": 8,
}


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter and buffer nonzero random values (the networks start with zero gammas)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif b.is_floating_point():
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return model.eval()


@pytest.fixture(scope="session")
def oracle_models() -> dict[str, Any]:
    """Diffusers' prior, decoder and VQ-GAN with random weights."""
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel, WuerstchenDiffNeXt, WuerstchenPrior

    torch.manual_seed(0)
    return {
        "prior": _randomise(WuerstchenPrior(**PRIOR)),
        "decoder": _randomise(WuerstchenDiffNeXt(**DECODER)),
        "vqgan": _randomise(PaellaVQModel(**VQGAN)),
    }


@pytest.fixture(scope="session")
def oracle_pipes(oracle_models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Diffusers' prior and decoder pipelines in memory, each saved (with Diffusers) to a folder.

    Short prompts (``model_max_length=8``) keep the text encoder cheap; the prior makes 2x2 embeddings
    of 85-pixel images (``resolution_multiple`` 42.67), the decoder 8x8 latents → 16-pixel images.
    """
    from difflux_transformers.testing import tiny_clip_text_model, tiny_clip_tokenizer
    from diffusers import DDPMWuerstchenScheduler
    from diffusers.pipelines.deprecated.wuerstchen import WuerstchenDecoderPipeline, WuerstchenPriorPipeline

    root = tmp_path_factory.mktemp("wuerstchen")
    tokenizer = tiny_clip_tokenizer(root / "vocab", model_max_length=8)
    prior = WuerstchenPriorPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_clip_text_model(0),
        prior=oracle_models["prior"],
        scheduler=DDPMWuerstchenScheduler(),
    )
    decoder = WuerstchenDecoderPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_clip_text_model(1),
        decoder=oracle_models["decoder"],
        scheduler=DDPMWuerstchenScheduler(),
        vqgan=oracle_models["vqgan"],
        latent_dim_scale=4.0,
    )
    for pipe in (prior, decoder):
        pipe.set_progress_bar_config(disable=True)
    prior.save_pretrained(root / "prior")
    decoder.save_pretrained(root / "decoder")
    return {"prior": prior, "decoder": decoder, "root": root}
