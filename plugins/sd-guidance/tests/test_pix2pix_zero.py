"""StableDiffusionPix2PixZeroPipeline against Diffusers: inversion, edit directions, cross-attention guidance."""

from __future__ import annotations

from typing import Any

import pytest

PROMPT = "a cat"
CATS, DOGS = ["a cat", "a photo of a cat"], ["a dog", "a photo of a dog"]


def test_loads_with_diffusers_layout(p2p_pair: Any) -> None:
    from difflux_sd_guidance import StableDiffusionPix2PixZeroPipeline

    ref, ours = p2p_pair
    assert type(ours) is StableDiffusionPix2PixZeroPipeline
    assert ours.caption_generator is None and type(ours.inverse_scheduler).__name__ == "DDIMInverseScheduler"
    assert ours.model_cpu_offload_seq == ref.model_cpu_offload_seq
    assert set(ours._optional_components) == set(ref._optional_components)


def test_embeds_and_direction(g: Any, p2p_pair: Any) -> None:
    ref, ours = p2p_pair
    a, b = ref.get_embeds(CATS), ours.get_embeds(CATS)
    assert b.shape == (1, 77, 32) and g.max_diff(a, b) <= 1e-6
    d = ours.construct_direction(b, ours.get_embeds(DOGS))
    assert g.max_diff(d, ref.construct_direction(a, ref.get_embeds(DOGS))) <= 1e-6


@pytest.mark.parametrize("options", [{}, {"guidance_scale": 1.0}], ids=["cfg", "no-cfg"])
def test_edit_parity(g: Any, p2p_pair: Any, options: dict[str, Any]) -> None:
    ref, ours = p2p_pair
    kw = {
        "prompt": PROMPT,
        "source_embeds": ours.get_embeds(CATS),
        "target_embeds": ours.get_embeds(DOGS),
        "num_inference_steps": 3,
        "cross_attention_guidance_amount": 0.5,
        **options,
    }
    g.compare(ref, ours, pixels=not options, **kw)
    if not options:  # the guidance step moves the result
        a = ours(**kw, generator=g.gen(0), output_type="latent").images
        b = ours(**{**kw, "cross_attention_guidance_amount": 0.0}, generator=g.gen(0), output_type="latent").images
        assert g.max_diff(a, b) > 1e-4


def test_inversion_parity(g: Any, p2p_pair: Any) -> None:
    ref, ours = p2p_pair
    kw = {
        "prompt": PROMPT,
        "image": g.image_input(1),
        "num_inference_steps": 3,
        "num_reg_steps": 1,
        "num_auto_corr_rolls": 2,
        "output_type": "np",
    }
    a = ref.invert(**kw, generator=g.gen(0))
    b = ours.invert(**kw, generator=g.gen(0))
    assert g.max_diff(a.latents, b.latents) <= g.LATENT_TOL
    assert g.max_diff(a.images, b.images) <= g.PIXEL_TOL


@pytest.mark.parametrize(
    ("call", "bad", "error", "match"),
    [
        ("__call__", {"source_embeds": None}, ValueError, "source_embeds and target_embeds"),
        ("__call__", {"prompt": None}, ValueError, "prompt"),
        ("invert", {"image": None}, ValueError, "image"),
        ("invert", {"num_reg_steps": -2}, ValueError, "num_reg_steps"),
        ("generate_caption", {}, ValueError, "caption_generator"),
    ],
)
def test_bad_input(g: Any, p2p_pair: Any, call: str, bad: dict[str, Any], error: type, match: str) -> None:
    _, ours = p2p_pair
    defaults: dict[str, dict[str, Any]] = {
        "__call__": {"prompt": PROMPT, "source_embeds": ours.get_embeds(CATS), "target_embeds": ours.get_embeds(DOGS)},
        "invert": {"prompt": PROMPT, "image": g.image_input(1)},
        "generate_caption": {"images": g.image_input(1)},
    }
    with pytest.raises(error, match=match):
        getattr(ours, call)(**{**defaults[call], **bad})


def test_invert_without_inverse_scheduler_refuses_before_any_model_runs(g: Any, p2p_pair: Any) -> None:
    _, ours = p2p_pair
    calls: list[str] = []
    models = {"vae": ours.vae.encoder, "text_encoder": ours.text_encoder, "unet": ours.unet}
    handles = [m.register_forward_pre_hook(lambda *a, n=n: calls.append(n)) for n, m in models.items()]
    inverse, ours.inverse_scheduler = ours.inverse_scheduler, None
    try:
        with pytest.raises(ValueError, match="inverse_scheduler"):
            ours.invert(prompt=PROMPT, image=g.image_input(1))
    finally:
        ours.inverse_scheduler = inverse
        for handle in handles:
            handle.remove()
    assert calls == []
