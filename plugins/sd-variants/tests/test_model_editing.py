"""StableDiffusionModelEditingPipeline: sampling against Diffusers; the TIME edit against its closed form."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture(scope="module")
def editing(sv: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    folder = tmp_path_factory.mktemp("editing")
    components = sv.sd_components(folder)
    del components["image_encoder"]
    return sv.saved_pair(folder, "StableDiffusionModelEditingPipeline", components, requires_safety_checker=False)


def test_model_editing_sampling_parity(sv: Any, editing: Any) -> None:
    """Unedited, the pipeline samples as Diffusers' does. (Diffusers 0.42.1's edit_model changes nothing: it looks
    for modules of class "CrossAttention", which no longer exist, so its edits cannot be compared.)"""
    ref, ours = editing
    kw: dict[str, Any] = {"prompt": sv.PROMPT, "num_inference_steps": 2, "output_type": "np", "negative_prompt": "a"}
    assert sv.max_diff(ref(**kw, generator=sv.gen(0)).images, ours(**kw, generator=sv.gen(0)).images) <= sv.PIXEL_TOL


def test_edit_model_solves_the_ridge_problem(sv: Any, editing: Any) -> None:
    """Each edited projection W' satisfies W' (lambda I + sum k k^T) = lambda W + sum v k^T (TIME eq. 5), with the
    keys from the source prompts and the values from the original W on the aligned destination tokens."""
    _, ours = editing
    layers = ours.ca_clip_layers
    assert len(layers) == 4 and ours.with_to_k  # cross-attention blocks: 1 down, 1 mid, 2 up; to_v and to_k each
    before = [copy.weight.detach().clone() for copy in ours.og_matrices]
    ours.edit_model("a cat", "a red cat", lamb=0.5)
    tok, enc = ours.tokenizer, ours.text_encoder
    olds = ["a cat", *(aug + "a cat" for aug in ours.with_augs)]
    news = ["a red cat", *(aug + "a red cat" for aug in ours.with_augs)]
    for layer, original, edited in zip(ours.og_matrices, before, ours.projection_matrices):
        lhs = 0.5 * torch.eye(original.shape[1])
        rhs = 0.5 * original
        for old, new in zip(olds, news):
            ids = tok([old, new], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            keys, dest = enc(ids)[0].detach()
            values = layer(dest[ours._aligned(old, new)]).detach()
            lhs, rhs = lhs + keys.T @ keys, rhs + values.T @ keys
        assert sv.max_diff(edited.weight.detach() @ lhs, rhs) <= 1e-3 * float(rhs.abs().max())
    assert ours._aligned("a cat", "a red cat")[:3] == [0, 1, 3]  # start, "a", then "cat" after the added "red"


def test_edit_model_changes_and_restarts(sv: Any, editing: Any) -> None:
    _, ours = editing
    kw: dict[str, Any] = {"prompt": "a cat", "num_inference_steps": 2, "output_type": "latent"}
    ours._restart()
    plain = ours(**kw, generator=sv.gen(1)).images
    ours.edit_model("a cat", "a blue cat")
    edited = ours(**kw, generator=sv.gen(1)).images
    ours.edit_model("a dog", "a dog", restart_params=True)  # an identity edit from the original weights
    ours._restart()
    again = ours(**kw, generator=sv.gen(1)).images
    assert sv.max_diff(plain, edited) > 1e-3 and sv.max_diff(plain, again) <= 1e-6


@pytest.mark.parametrize(
    ("args", "match"),
    [(("a cat", "a dog"), "contain every token"), (("a cat", ""), "destination_prompt"), ((1, "a"), "source_prompt")],
)
def test_edit_model_bad_input(editing: Any, args: tuple[Any, Any], match: str) -> None:
    _, ours = editing
    with pytest.raises((ValueError, TypeError), match=match):
        ours.edit_model(*args)
    with pytest.raises(ValueError, match="lamb"):
        ours.edit_model("a cat", "a red cat", lamb=0.0)
