"""Every registered pipeline refuses a ``*prompt_embeds`` argument that is not a tensor, by name, before its
own code runs (a list or an array used to fail deep inside with ``AttributeError: ... has no attribute
'shape'``)."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import torch
from difflux.registry import get_registry


def _embeds_pipelines() -> list[Any]:
    params = []
    registry = get_registry()
    for name, registration in sorted(registry.pipelines.items()):
        cls = registration.load()
        keys = [k for k in inspect.signature(cls.__call__).parameters if k.endswith("prompt_embeds")]
        if keys:
            params.append(pytest.param(cls, keys, id=name))
    return params


PIPELINES = _embeds_pipelines()


def test_the_sweep_covers_the_families() -> None:
    names = {p.id for p in PIPELINES}
    for expected in (
        "StableDiffusionPipeline",
        "StableDiffusionXLPipeline",
        "PixArtAlphaPipeline",
        "IFPipeline",
        "Kandinsky3Pipeline",
        "WuerstchenPriorPipeline",
        "AudioLDM2Pipeline",
        "StableDiffusionControlNetPipeline",
    ):
        assert expected in names


@pytest.mark.parametrize(("cls", "keys"), PIPELINES)
@pytest.mark.parametrize("bad", [[[0.0] * 4], np.zeros((1, 2, 4), dtype=np.float32)], ids=["list", "ndarray"])
def test_a_non_tensor_prompt_embeds_is_refused_by_name(cls: Any, keys: list[str], bad: Any) -> None:
    pipe = cls.__new__(cls)  # no components: the check runs before anything of the pipeline is used
    for key in keys:
        message = rf"{cls.__name__}: {key} must be a torch.Tensor .*got {type(bad).__name__}"
        with pytest.raises(TypeError, match=message):
            pipe(**{key: bad})
    # a tensor passes the check (and then fails later, in the pipeline, for want of components)
    with pytest.raises(Exception) as info:
        pipe(**{keys[0]: torch.zeros(1, 2, 4)})
    assert "must be a torch.Tensor" not in str(info.value)
