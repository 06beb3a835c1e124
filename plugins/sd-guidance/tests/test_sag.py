"""StableDiffusionSAGPipeline against Diffusers: same folder, same seed, same latents and images."""

from __future__ import annotations

from typing import Any

import diffusers
import pytest
import torch

PROMPT = "a photo of a cat"


def test_loads_with_diffusers_layout(sag_pair: Any) -> None:
    from difflux_sd_guidance import StableDiffusionSAGPipeline

    ref, ours = sag_pair
    assert type(ours) is StableDiffusionSAGPipeline
    assert ours.model_cpu_offload_seq == ref.model_cpu_offload_seq
    assert set(ours._optional_components) == set(ref._optional_components)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"guidance_scale": 1.0, "sag_scale": 0.5},
        {"sag_scale": 0.0},
        {"negative_prompt": "blurry", "sag_scale": 1.2},
    ],
    ids=["cfg", "no-cfg", "off", "negative"],
)
def test_parity(g: Any, sag_pair: Any, options: dict[str, Any]) -> None:
    ref, ours = sag_pair
    g.compare(ref, ours, prompt=PROMPT, num_inference_steps=2, **options)


def test_generator_list_and_only_the_mid_module_explicit(g: Any, sag_pair: Any) -> None:
    ref, ours = sag_pair
    kw: dict[str, Any] = {"prompt": [PROMPT, "a dog"], "num_images_per_prompt": 2, "num_inference_steps": 2}
    a = ref(**kw, generator=[g.gen(i) for i in range(4)], output_type="latent").images
    b = ours(**kw, generator=[g.gen(i) for i in range(4)], output_type="latent").images
    assert g.max_diff(a, b) <= g.LATENT_TOL
    alone = ours(prompt="a dog", num_inference_steps=2, generator=g.gen(3), output_type="latent").images
    assert g.max_diff(alone[0], b[3]) <= g.LATENT_TOL  # one image per generator, reproducible alone
    seen: list[str] = []
    for name, module in ours.unet.named_modules():
        if type(module).__name__ == "Attention":
            module.register_forward_pre_hook(
                lambda m, a, name=name: seen.append(f"{name}:{type(m.processor).__name__}")
            )
    ours(prompt=PROMPT, num_inference_steps=1, output_type="latent")
    explicit = {s for s in seen if not s.endswith(":AttnProcessor")}
    assert explicit == {"mid_block.attentions.0.transformer_blocks.0.attn1:AttentionStoreProcessor"}
    assert all(type(m.processor).__name__ == "AttnProcessor" for m in ours.unet.modules() if hasattr(m, "processor"))


def test_bad_input(sag_pair: Any) -> None:
    _, ours = sag_pair
    with pytest.raises(ValueError, match="sag_scale"):
        ours(prompt=PROMPT, sag_scale=-1.0)
    with pytest.raises(ValueError, match="sag_scale"):
        ours(prompt=PROMPT, sag_scale="big")
    with pytest.raises(ValueError, match="prompt"):
        ours(prompt=None)
    euler = ours.scheduler
    try:
        from difflux_schedulers import EulerDiscreteScheduler

        ours.scheduler = EulerDiscreteScheduler.from_config(euler.config)
        with pytest.raises(ValueError, match="does not support EulerDiscreteScheduler"):
            ours(prompt=PROMPT, num_inference_steps=2)
    finally:
        ours.scheduler = euler


def test_saved_folder_loads_in_diffusers(g: Any, sag_pair: Any, tmp_path: Any) -> None:
    _, ours = sag_pair
    ours.save_pretrained(tmp_path / "ours")
    back = diffusers.StableDiffusionSAGPipeline.from_pretrained(tmp_path / "ours")
    back.set_progress_bar_config(disable=True)
    a = back(prompt=PROMPT, num_inference_steps=2, generator=g.gen(1), output_type="latent").images
    b = ours(prompt=PROMPT, num_inference_steps=2, generator=g.gen(1), output_type="latent").images
    assert torch.allclose(a, b, atol=g.LATENT_TOL)
