"""SemanticStableDiffusionPipeline (SEGA) against Diffusers: same folder, same seed, same images."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture(scope="module")
def sega(sv: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    folder = tmp_path_factory.mktemp("sega")
    components = sv.sd_components(folder)
    del components["image_encoder"]
    return sv.saved_pair(folder, "SemanticStableDiffusionPipeline", components, requires_safety_checker=False)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"editing_prompt": ["a dog", "red"], "edit_warmup_steps": [0, 1],
                      "reverse_editing_direction": [False, True], "edit_threshold": [0.8, 0.5],
                      "edit_weights": [1.0, 2.0]}, id="two-concepts-staggered"),
        pytest.param({"editing_prompt": "blue", "edit_warmup_steps": 0, "edit_cooldown_steps": 2,
                      "edit_guidance_scale": 3.0, "negative_prompt": "a cat", "num_images_per_prompt": 2},
                     id="cooldown-negative", marks=pytest.mark.slow),
        pytest.param({}, id="no-edit", marks=pytest.mark.slow),
    ],
)
def test_sega_parity(sv: Any, sega: Any, options: dict[str, Any]) -> None:
    ref, ours = sega
    kw = {"prompt": sv.PROMPT, "num_inference_steps": 3, "output_type": "np", **options}
    a, b = ref(**kw, generator=sv.gen(0)), ours(**kw, generator=sv.gen(0))
    assert type(b).__name__ == "SemanticStableDiffusionPipelineOutput"
    assert sv.max_diff(a.images, b.images) <= sv.PIXEL_TOL
    if options:
        assert sv.max_diff(ref.sem_guidance, ours.sem_guidance) <= 1e-4


@pytest.mark.slow
def test_sega_replays_sem_guidance(sv: Any, sega: Any) -> None:
    """A run's recorded semantic guidance, passed back without editing prompts, gives the edited image again."""
    _, ours = sega
    kw: dict[str, Any] = {"prompt": sv.PROMPT, "num_inference_steps": 3, "output_type": "latent",
                          "edit_momentum_scale": 0.0}
    edited = ours(**kw, editing_prompt="a dog", edit_warmup_steps=0, generator=sv.gen(1)).images
    recorded = ours.sem_guidance.clone()
    replayed = ours(**kw, sem_guidance=list(recorded), generator=sv.gen(1)).images
    plain = ours(**kw, generator=sv.gen(1)).images
    assert sv.max_diff(edited, replayed) <= 1e-4 and sv.max_diff(edited, plain) > 1e-3


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"editing_prompt": ["a", "b"], "edit_guidance_scale": [1.0]}, "edit_guidance_scale"),
        ({"editing_prompt": "a", "edit_threshold": 1.5}, "edit_threshold"),
        ({"editing_prompt": "a", "reverse_editing_direction": "yes"}, "reverse_editing_direction"),
        ({"editing_prompt": "a", "edit_warmup_steps": -1}, "edit_warmup_steps"),
        ({"edit_mom_beta": 2.0}, "edit_mom_beta"),
        ({"sem_guidance": [torch.zeros(1)]}, "sem_guidance"),
        ({"editing_prompt": "a", "editing_prompt_embeddings": torch.zeros(1, 77, 32)}, "not both"),
    ],
)
def test_sega_bad_input(sv: Any, sega: Any, bad: dict[str, Any], match: str) -> None:
    _, ours = sega
    with pytest.raises((ValueError, TypeError), match=match):
        ours(prompt=sv.PROMPT, num_inference_steps=2, **bad)
