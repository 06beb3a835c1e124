"""PriorTransformer and UnCLIPTextProjModel: two-way parity with diffusers at the unCLIP (Karlo),
Kandinsky and Shap-E prior layouts, scaled down; masks; conformance."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest
import torch
from difflux.testing import ComponentConformance
from difflux_models import PriorTransformer, UnCLIPTextProjModel

TINY: dict[str, Any] = {
    "num_attention_heads": 2,
    "attention_head_dim": 4,
    "num_layers": 2,
    "embedding_dim": 8,
    "num_embeddings": 5,
    "additional_embeddings": 4,
}

CASES: dict[str, dict[str, Any]] = {
    "unclip_karlo": {},
    "kandinsky": {
        "norm_in_type": "layer",
        "embedding_proj_norm_type": "layer",
        "time_embed_act_fn": "gelu",
        "clip_embed_dim": 6,
    },
    "shap_e": {
        "encoder_hid_proj_type": None,
        "added_emb_type": None,
        "additional_embeddings": 0,
        "num_embeddings": 3,
        "embedding_proj_dim": 10,
        "time_embed_dim": 16,
        "norm_in_type": "layer",
    },
}


def prior_inputs(config: dict[str, Any], mask: bool = False) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    shap_e = config.get("added_emb_type", "prd") is None
    inputs: dict[str, Any] = {
        "hidden_states": torch.randn(2, 3, 8, generator=g) if shap_e else torch.randn(2, 8, generator=g),
        "timestep": torch.tensor([3, 500]),
        "proj_embedding": torch.randn(2, config.get("embedding_proj_dim", 8), generator=g),
    }
    if not shap_e:
        inputs["encoder_hidden_states"] = torch.randn(2, config.get("num_embeddings", 5), 8, generator=g)
    if mask:
        inputs["attention_mask"] = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    return inputs


def prior_forward(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    out: torch.Tensor = model(**inputs).predicted_image_embedding
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_prior_parity(parity: Any, kit: Any, case: str) -> None:
    config = {**TINY, **CASES[case]}
    result = parity(
        diffusers.PriorTransformer, PriorTransformer, config, lambda: prior_inputs(config), forward=prior_forward
    )
    latents = torch.randn(2, config.get("clip_embed_dim", 8), generator=torch.Generator().manual_seed(4))
    kit.assert_close(result.model.post_process_latents(latents), result.reference.post_process_latents(latents))


def test_prior_attention_mask_turns_causal_mask_on(parity: Any, kit: Any) -> None:
    result = parity(
        diffusers.PriorTransformer, PriorTransformer, TINY, lambda: prior_inputs(TINY, mask=True), forward=prior_forward
    )
    with torch.no_grad():
        unmasked = prior_forward(result.model, prior_inputs(TINY))
    assert (unmasked - result.actual).abs().max() > 1e-4  # the mask matters
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        result.model(**{k: v for k, v in prior_inputs(TINY).items() if k != "encoder_hidden_states"})


TEXT_PROJ: dict[str, Any] = {
    "clip_extra_context_tokens": 3,
    "clip_embeddings_dim": 8,
    "time_embed_dim": 12,
    "cross_attention_dim": 6,
}


def text_proj_inputs(cfg: bool) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    batch = 4 if cfg else 2
    return {
        "image_embeddings": torch.randn(2, 8, generator=g),
        "prompt_embeds": torch.randn(batch, 8, generator=g),
        "text_encoder_hidden_states": torch.randn(batch, 5, 8, generator=g),
        "do_classifier_free_guidance": cfg,
    }


@pytest.mark.parametrize("cfg", [True, False], ids=["guidance", "no_guidance"])
def test_text_proj_parity(parity: Any, kit: Any, cfg: bool) -> None:
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel as Reference

    def forward(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
        states, time = model(**inputs)
        return torch.cat([states.flatten(1), time], dim=1)

    result = parity(Reference, UnCLIPTextProjModel, TEXT_PROJ, lambda: text_proj_inputs(cfg), forward=forward)
    assert result.actual.shape == ((4 if cfg else 2), (3 + 5) * 6 + 12)
    with pytest.raises(ValueError, match="batches must match"):
        result.model(**{**text_proj_inputs(cfg), "do_classifier_free_guidance": not cfg})


class TestPriorConformance(ComponentConformance):
    component_class = PriorTransformer
    atol = 1e-5

    def make_component(self) -> PriorTransformer:
        torch.manual_seed(0)
        model = PriorTransformer(**TINY)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return model

    def make_inputs(self) -> dict[str, Any]:
        return prior_inputs(TINY)
