"""Kandinsky 3 against Diffusers 0.42.1 on the same folders, seeds and inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from difflux_stable_diffusion.testing import gen, image_input, load_difflux, max_diff

# 16 pixels: Diffusers sizes Kandinsky 3 latents for an 8x MoVQ (ceil(16 / 64) * 8 = 8); difflux uses the
# MoVQ's own factor (ceil(16 / 4) * 2 = 8 for the tiny 2x MoVQ): the same 8x8 latents here
SIZE = 16
TOL = 1e-4


def _diffusers(folder: Path) -> Any:
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("Kandinsky3Pipeline", {}),
        ("Kandinsky3Pipeline", {"negative_prompt": "a dog"}),
        ("Kandinsky3Pipeline", {"guidance_scale": 1.0}),
        ("Kandinsky3Img2ImgPipeline", {"image": "pil", "strength": 0.5, "num_inference_steps": 4}),
    ],
)
def test_parity(k3_folders: dict[str, Path], name: str, extra: dict[str, Any]) -> None:
    ours, theirs = load_difflux(k3_folders[name]), _diffusers(k3_folders[name])
    assert type(ours).__name__ == name
    extra = dict(extra)
    if extra.get("image") == "pil":
        extra["image"] = image_input(0, SIZE)
    else:
        extra.update(height=SIZE, width=SIZE)
    args: dict[str, Any] = {"prompt": "a red cat", "num_inference_steps": 2, "output_type": "np", **extra}
    a, b = ours(**args, generator=gen(0)).images, theirs(**args, generator=gen(0)).images
    assert a.shape == b.shape == (1, SIZE, SIZE, 3)
    assert max_diff(a, b) <= TOL


def test_prompt_embeds_with_mask_equal_the_prompt(k3_folders: dict[str, Path]) -> None:
    pipe = load_difflux(k3_folders["Kandinsky3Pipeline"])
    states, mask, _, _ = pipe.encode_prompt("a red cat", None, 1, False)
    args: dict[str, Any] = {"height": SIZE, "width": SIZE, "num_inference_steps": 2, "output_type": "latent"}
    a = pipe(prompt="a red cat", **args, generator=gen(1)).images
    b = pipe(prompt_embeds=states, attention_mask=mask, **args, generator=gen(1)).images
    assert max_diff(a, b) <= 1e-4


def test_two_prompts_two_images_each(k3_folders: dict[str, Path]) -> None:
    """Each prompt's mask follows its own embeddings (Diffusers tiles masks against interleaved embeddings).

    The embeddings are given, so both runs see the same token count (Kandinsky 3's attention pooling
    averages over the padded tokens too: the padded length is part of the model's input).
    """
    pipe = load_difflux(k3_folders["Kandinsky3Pipeline"])
    states, mask, _, _ = pipe.encode_prompt(["a red cat", "a cat"], None, 1, False)
    assert bool((mask[0] != mask[1]).any())
    args: dict[str, Any] = {"height": SIZE, "width": SIZE, "num_inference_steps": 2, "output_type": "latent"}
    both = pipe(
        prompt_embeds=states, attention_mask=mask, num_images_per_prompt=2, **args, generator=[gen(i) for i in range(4)]
    )
    second = pipe(
        prompt_embeds=states[1:], attention_mask=mask[1:], num_images_per_prompt=2, **args, generator=[gen(2), gen(3)]
    )
    assert max_diff(both.images[2:], second.images) <= 1e-4


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"prompt": None}, "pass prompt or prompt_embeds"),
        ({"prompt": 5}, "prompt must be a string"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 4, 32)}, "need attention_mask"),
        ({"negative_prompt": ["a", "b"]}, "2 negative prompts for 1"),
        ({"height": 0}, "height"),
        ({"output_type": "gif"}, "output_type"),
    ],
)
def test_bad_input_is_refused(k3_folders: dict[str, Path], bad: dict[str, Any], match: str) -> None:
    pipe = load_difflux(k3_folders["Kandinsky3Pipeline"])
    calls: list[int] = []
    hook = pipe.text_encoder.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises((TypeError, ValueError), match=match):
            pipe(**{"prompt": "a cat", "height": SIZE, "width": SIZE, **bad})
    finally:
        hook.remove()
    assert calls == []
