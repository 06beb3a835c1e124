"""Pieces every pipeline family shares: input checks, initial noise, the step callback, outputs.

A pipeline's ``__call__`` reads as check → prepare latents → denoise loop → decode; the
functions here are the parts of those steps that do not depend on the family::

    check_batch(batch_size, generator)
    check_callback_inputs(names, self._callback_tensor_inputs, type(self).__name__)
    latents = prepare_noise(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
    for i, t in enumerate(self.progress_bar(timesteps)):
        latents = ...
        if callback_on_step_end is not None:
            latents = step_callback(self, callback_on_step_end, i, t, {"latents": latents}, names)["latents"]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .outputs import BaseOutput
from .torch_utils import randn_tensor

if TYPE_CHECKING:
    from .pipeline import DiffusionPipeline

__all__ = [
    "AudioPipelineOutput",
    "StepCallback",
    "check_batch",
    "check_callback_inputs",
    "check_output_type",
    "class_label_tensor",
    "prepare_noise",
    "sample_shape",
    "step_callback",
]

#: ``callback_on_step_end(pipeline, step_index, timestep, tensors) -> replacements``: called after
#: each denoising step with the tensors named in ``callback_on_step_end_tensor_inputs``; the
#: mapping it returns (or ``None``) replaces those tensors for the following steps.
StepCallback = Callable[["DiffusionPipeline", int, Any, dict[str, Any]], Mapping[str, Any] | None]


@dataclasses.dataclass
class AudioPipelineOutput(BaseOutput):
    """What audio pipelines return: waveforms shaped ``(batch, channels, samples)``, as an array or tensor."""

    audios: np.ndarray | torch.Tensor


def sample_shape(batch_size: int, channels: int, sample_size: int | Sequence[int]) -> tuple[int, ...]:
    """``(batch, channels, *spatial)`` for a model whose config gives ``sample_size`` as one int or a tuple.

    One int means a square image; a sequence gives every spatial size (one for audio, two for images).
    """
    spatial = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(int(s) for s in sample_size)
    return (batch_size, channels, *spatial)


def check_batch(batch_size: int, generator: torch.Generator | Sequence[torch.Generator] | None) -> None:
    """``batch_size`` is a positive int and a list of generators has one generator per sample."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(generator, Sequence) and len(generator) != batch_size:
        raise ValueError(
            f"got a list of {len(generator)} generators for batch_size={batch_size}; pass one generator, "
            "or one per image"
        )


def check_output_type(output_type: str, allowed: Sequence[str], pipeline: str) -> None:
    """``output_type`` is one of ``allowed``."""
    if output_type not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{pipeline}: output_type={output_type!r} is not supported; choose one of {choices}")


def check_callback_inputs(names: Sequence[str], allowed: Sequence[str], pipeline: str) -> None:
    """Every name in ``callback_on_step_end_tensor_inputs`` is a tensor the pipeline can hand over."""
    if isinstance(names, str):
        raise TypeError(f"{pipeline}: callback_on_step_end_tensor_inputs must be a list of names, not a string")
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise ValueError(
            f"{pipeline}: callback_on_step_end_tensor_inputs names {', '.join(map(repr, unknown))}, which this "
            f"pipeline does not provide; it provides {', '.join(map(repr, allowed))}"
        )


def prepare_noise(
    shape: Sequence[int],
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None,
    device: torch.device | str,
    dtype: torch.dtype,
    init_noise_sigma: float | torch.Tensor = 1.0,
    latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """The starting sample: ``latents`` if given (checked and moved), else fresh noise, times ``init_noise_sigma``.

    Noise is drawn as :func:`difflux.torch_utils.randn_tensor` draws it, so a CPU generator gives
    the same start on every device.
    """
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    else:
        if tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {tuple(shape)}")
        latents = latents.to(device=device, dtype=dtype)
    if isinstance(init_noise_sigma, torch.Tensor) or init_noise_sigma != 1.0:
        latents = latents * init_noise_sigma
    return latents


def class_label_tensor(
    class_labels: int | Sequence[int] | torch.Tensor, batch_size: int, device: torch.device | str
) -> torch.Tensor:
    """Class labels as a ``(batch_size,)`` int64 tensor: one int for every sample, or one per sample."""
    if isinstance(class_labels, torch.Tensor):
        labels = class_labels.reshape(-1).to(device=device, dtype=torch.long)
    elif isinstance(class_labels, int):
        labels = torch.full((batch_size,), class_labels, dtype=torch.long, device=device)
    else:
        labels = torch.tensor(list(class_labels), dtype=torch.long, device=device)
    if labels.numel() == 1 and batch_size > 1:
        labels = labels.expand(batch_size)
    if labels.numel() != batch_size:
        raise ValueError(f"got {labels.numel()} class labels for batch_size={batch_size}; pass one, or one per sample")
    return labels


def step_callback(
    pipe: DiffusionPipeline,
    callback: StepCallback,
    step_index: int,
    timestep: Any,
    tensors: Mapping[str, Any],
    names: Sequence[str],
) -> dict[str, Any]:
    """Run ``callback_on_step_end`` after a step; returns ``tensors`` with the callback's replacements.

    The callback sees only the tensors named in ``names`` (a callback object with a
    ``tensor_inputs`` attribute names its own), and may return replacements for any of them.
    """
    wanted = getattr(callback, "tensor_inputs", None) or names
    given = {name: tensors[name] for name in wanted}
    replaced = callback(pipe, step_index, timestep, given) or {}
    unknown = sorted(set(replaced) - set(tensors))
    if unknown:
        raise ValueError(
            f"{type(pipe).__name__}: callback_on_step_end returned {', '.join(unknown)}, which the pipeline "
            f"does not use; it can replace {', '.join(tensors)}"
        )
    return {**tensors, **replaced}
