"""StableDiffusionAttendAndExcitePipeline against Diffusers: same folder, same seed, same latents and images;
the gradient passes read the cross-attention maps while the denoising calls keep the fused kernel."""

from __future__ import annotations

from typing import Any

import pytest
import torch

PROMPT = "a cat and a frog"
#: the tiny UNet's cross-attention blocks work at 8x8 (16x16 latents, one downsampling)
KW: dict[str, Any] = {"prompt": PROMPT, "token_indices": [2, 5], "attn_res": (8, 8), "num_inference_steps": 2}


def test_loads_with_diffusers_layout(ae_pair: Any) -> None:
    from difflux_sd_guidance import StableDiffusionAttendAndExcitePipeline

    ref, ours = ae_pair
    assert type(ours) is StableDiffusionAttendAndExcitePipeline
    assert ours.model_cpu_offload_seq == ref.model_cpu_offload_seq
    assert set(ours._optional_components) == set(ref._optional_components)
    assert ours.get_indices(PROMPT) == ref.get_indices(PROMPT)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"guidance_scale": 1.0, "max_iter_to_alter": 1, "thresholds": {1: 0.9}, "scale_factor": 5},
        {"negative_prompt": "blurry", "thresholds": {}, "max_iter_to_alter": 2},
    ],
    ids=["default", "no-cfg-refine-late", "no-refinement"],
)
def test_parity(g: Any, ae_pair: Any, options: dict[str, Any]) -> None:
    ref, ours = ae_pair
    g.compare(ref, ours, pixels=not options, **{**KW, **options})  # images once; refinement loops are slow


def test_batch_with_per_prompt_indices_and_generators(g: Any, ae_pair: Any) -> None:
    ref, ours = ae_pair
    kw = {**KW, "prompt": [PROMPT, "a dog on a hat"], "token_indices": [[2, 5], [2, 4]], "num_images_per_prompt": 2}
    kw["thresholds"] = {}  # refinement loops are covered above; keep this one quick
    a = ref(**kw, generator=[g.gen(i) for i in range(4)], output_type="latent").images
    b = ours(**kw, generator=[g.gen(i) for i in range(4)], output_type="latent").images
    assert g.max_diff(a, b) <= g.LATENT_TOL


def test_the_update_moves_the_latents_and_denoising_stays_fused(g: Any, ae_pair: Any) -> None:
    _, ours = ae_pair
    kinds: list[tuple[bool, str]] = []
    for module in ours.unet.modules():
        if type(module).__name__ == "Attention":
            module.register_forward_pre_hook(
                lambda m, a: kinds.append((torch.is_grad_enabled(), type(m.processor).__name__))
            )
    kw = {**KW, "thresholds": {}, "output_type": "latent"}
    excited = ours(**kw, generator=g.gen(0)).images
    plain = ours(**{**kw, "max_iter_to_alter": 0}, generator=g.gen(0)).images
    assert (excited - plain).abs().max() > 1e-4  # the gradient step changed the result
    no_grad = {name for grad, name in kinds if not grad}
    with_grad = {name for grad, name in kinds if grad}
    assert with_grad == {"AttnProcessor", "CrossAttentionMaps"}  # self-attention fused even in gradient passes
    assert "CrossAttentionMaps" in no_grad  # installed during the denoising calls too, where it stays fused
    assert all(type(m.processor).__name__ == "AttnProcessor" for m in ours.unet.modules() if hasattr(m, "processor"))


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"token_indices": None}, ValueError, "token_indices"),
        ({"token_indices": "2"}, TypeError, "list of ints"),
        ({"token_indices": [0, 2]}, ValueError, "outside 1..75"),
        ({"token_indices": [[2], [3]]}, ValueError, "one per prompt"),
        ({"attn_res": (16, 16)}, ValueError, "attn_res"),
        ({"attn_res": (8,)}, ValueError, "two positive ints"),
        ({"max_iter_to_alter": -1}, ValueError, "max_iter_to_alter"),
        ({"thresholds": [0.5]}, TypeError, "thresholds"),
        ({"prompt": None}, ValueError, "prompt"),
    ],
)
def test_bad_input(ae_pair: Any, bad: dict[str, Any], error: type[Exception], match: str) -> None:
    _, ours = ae_pair
    with pytest.raises(error, match=match):
        ours(**{**KW, **bad})
