"""``difflux.pipeline_utils``: the pieces every pipeline family shares."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from difflux.pipeline_utils import (
    check_batch,
    check_callback_inputs,
    check_output_type,
    class_label_tensor,
    prepare_noise,
    sample_shape,
    step_callback,
)
from difflux.torch_utils import randn_tensor


def test_sample_shape_square_rectangular_and_audio() -> None:
    assert sample_shape(2, 3, 8) == (2, 3, 8, 8)
    assert sample_shape(1, 4, (8, 16)) == (1, 4, 8, 16)
    assert sample_shape(1, 2, [64]) == (1, 2, 64)


def test_check_batch() -> None:
    check_batch(2, [torch.Generator(), torch.Generator()])
    check_batch(3, torch.Generator())
    with pytest.raises(ValueError, match="2 generators for batch_size=3"):
        check_batch(3, [torch.Generator(), torch.Generator()])
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="positive integer"):
            check_batch(bad, None)  # type: ignore[arg-type]


def test_check_output_type_and_callback_inputs() -> None:
    check_output_type("np", ("pil", "np"), "P")
    with pytest.raises(ValueError, match="P: output_type='latent' is not supported; choose one of 'pil', 'np'"):
        check_output_type("latent", ("pil", "np"), "P")
    check_callback_inputs(["latents"], ("latents", "noise_pred"), "P")
    with pytest.raises(ValueError, match=r"'x'.*provides 'latents'"):
        check_callback_inputs(["latents", "x"], ("latents",), "P")
    with pytest.raises(TypeError, match="list of names"):
        check_callback_inputs("latents", ("latents",), "P")


def test_prepare_noise_draws_like_randn_tensor_and_scales() -> None:
    noise = prepare_noise((2, 3, 4, 4), generator=torch.Generator().manual_seed(0), device="cpu", dtype=torch.float32)
    assert torch.equal(noise, randn_tensor((2, 3, 4, 4), generator=torch.Generator().manual_seed(0)))
    scaled = prepare_noise(
        (2, 3, 4, 4),
        generator=torch.Generator().manual_seed(0),
        device="cpu",
        dtype=torch.float64,
        init_noise_sigma=80.0,
    )
    expected = randn_tensor((2, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    assert scaled.dtype == torch.float64 and torch.equal(scaled, expected)
    given = torch.ones((1, 2, 3))
    assert torch.equal(
        prepare_noise((1, 2, 3), generator=None, device="cpu", dtype=torch.float32, latents=given), given
    )
    with pytest.raises(ValueError, match=r"latents have shape \(1, 2, 3\), expected \(1, 2, 4\)"):
        prepare_noise((1, 2, 4), generator=None, device="cpu", dtype=torch.float32, latents=given)


def test_class_label_tensor() -> None:
    assert class_label_tensor(3, 2, "cpu").tolist() == [3, 3]
    assert class_label_tensor([1, 2], 2, "cpu").tolist() == [1, 2]
    assert class_label_tensor(torch.tensor([4]), 3, "cpu").tolist() == [4, 4, 4]
    assert class_label_tensor(torch.tensor([1, 2], dtype=torch.int32), 2, "cpu").dtype == torch.long
    with pytest.raises(ValueError, match="3 class labels for batch_size=2"):
        class_label_tensor([1, 2, 3], 2, "cpu")


def test_step_callback_hands_over_named_tensors_and_takes_replacements() -> None:
    pipe: Any = object()
    state = {"latents": torch.zeros(1), "noise_pred": torch.ones(1)}
    seen: dict[str, Any] = {}

    def callback(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.update(pipe=p, i=i, t=t, names=sorted(tensors))
        return {"latents": tensors["latents"] + 5}

    out = step_callback(pipe, callback, 3, 999, state, ["latents"])
    assert seen == {"pipe": pipe, "i": 3, "t": 999, "names": ["latents"]}
    assert out["latents"].item() == 5 and out["noise_pred"] is state["noise_pred"]
    assert step_callback(pipe, lambda *a: None, 0, 0, state, ["latents"]) == state
    with pytest.raises(ValueError, match="returned prompt_embeds"):
        step_callback(pipe, lambda *a: {"prompt_embeds": 1}, 0, 0, state, ["latents"])


def test_step_callback_object_names_its_own_inputs() -> None:
    class Callback:
        tensor_inputs = ["noise_pred"]

        def __call__(self, p: Any, i: int, t: Any, tensors: dict[str, Any]) -> None:
            assert list(tensors) == ["noise_pred"]

    step_callback(object(), Callback(), 0, 0, {"latents": 0, "noise_pred": 1}, ["latents"])  # type: ignore[arg-type]
