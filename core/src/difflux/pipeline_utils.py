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
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL.Image
import torch

from .outputs import BaseOutput
from .torch_utils import randn_tensor

if TYPE_CHECKING:
    from .pipeline import DiffusionPipeline

__all__ = [
    "AudioPipelineOutput",
    "DenoisingState",
    "LegacyCallback",
    "ScheduleCut",
    "StepCallback",
    "check_batch",
    "check_callback_inputs",
    "check_embeds_width",
    "check_finite",
    "check_image_size",
    "check_output_type",
    "check_size",
    "check_steps",
    "class_label_tensor",
    "cut_schedule",
    "legacy_callback",
    "prepare_noise",
    "sample_shape",
    "step_callback",
]

#: ``callback_on_step_end(pipeline, step_index, timestep, tensors) -> replacements``: called after
#: each denoising step with the tensors named in ``callback_on_step_end_tensor_inputs``; the
#: mapping it returns (or ``None``) replaces those tensors for the following steps.
StepCallback = Callable[["DiffusionPipeline", int, Any, dict[str, Any]], Mapping[str, Any] | None]

#: The deprecated ``callback(step, timestep, latents)`` of ``callback=`` / ``callback_steps=``.
LegacyCallback = Callable[[int, Any, "torch.Tensor"], Any]


@dataclasses.dataclass
class AudioPipelineOutput(BaseOutput):
    """What audio pipelines return: waveforms as an array or tensor (``(batch, channels, samples)`` for
    Dance Diffusion, ``(batch, samples)`` for the latent text-to-audio pipelines), values in ``[-1, 1]``.

    ``sample_rate`` (Hz) is an attribute, not part of the tuple view (``out[0]`` stays the waveforms,
    as in Diffusers); ``None`` when the pipeline cannot tell (``output_type="latent"``).
    """

    audios: np.ndarray | torch.Tensor
    sample_rate: int | None = dataclasses.field(default=None, metadata={"view": False})


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


# -- input checks ----------------------------------------------------------------------------------


def check_size(height: Any, width: Any, multiple: int, pipeline: str) -> None:
    """``height`` and ``width`` (pixels) are positive ints divisible by ``multiple`` (``None``: not given).

    :raises ValueError: naming the bad value and the nearest valid sizes.
    """
    for name, value in (("height", height), ("width", width)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{pipeline}: {name} must be an int number of pixels, got {value!r}")
        value = int(value)
        if value <= 0:
            raise ValueError(
                f"{pipeline}: {name}={value} must be positive (a multiple of {multiple}, e.g. {multiple * 64})"
            )
        if value % multiple:
            low, high = value - value % multiple, value - value % multiple + multiple
            nearest = f"{low} or {high}" if low > 0 else f"{high}"
            raise ValueError(
                f"{pipeline}: {name}={value} is not a multiple of {multiple} (the VAE's downscaling); use {nearest}"
            )


def check_finite(value: Any, name: str, pipeline: str) -> None:
    """A tensor (or array) input holds no NaN or infinity; anything else passes.

    :raises ValueError: naming the input and how many values are not finite.
    """
    if isinstance(value, (list, tuple)):
        for item in value:
            check_finite(item, name, pipeline)
        return
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        bad = int((~np.isfinite(value)).sum())
    elif isinstance(value, torch.Tensor) and value.is_floating_point():
        bad = int((~torch.isfinite(value)).sum().item())
    else:
        return
    if bad:
        raise ValueError(f"{pipeline}: {name} holds {bad} NaN or infinite values; pass finite values")


def check_embeds_width(embeds: torch.Tensor | None, width: int | None, name: str, pipeline: str, what: str) -> None:
    """``embeds`` is a ``(batch, tokens, width)`` tensor whose last axis is ``width`` (``None``: any width).

    :param what: what fixes the width, for the message (``"the UNet's cross_attention_dim"``).
    :raises ValueError: for a wrong rank or width.
    """
    if embeds is None:
        return
    if not isinstance(embeds, torch.Tensor):
        raise TypeError(f"{pipeline}: {name} must be a torch.Tensor, got {type(embeds).__name__}")
    if embeds.ndim != 3:
        raise ValueError(f"{pipeline}: {name} must be shaped (batch, tokens, features), got {tuple(embeds.shape)}")
    if width is not None and embeds.shape[-1] != width:
        raise ValueError(
            f"{pipeline}: {name} have {embeds.shape[-1]} features per token, but {what} is {width}; "
            "encode the prompt with this pipeline's text encoder(s)"
        )
    check_finite(embeds, name, pipeline)


def image_hw(image: Any) -> tuple[int, int] | None:
    """``(height, width)`` of an image input (PIL, ``HWC``/``NHWC`` array, ``CHW``/``NCHW`` tensor, or a list)."""
    first = image[0] if isinstance(image, (list, tuple)) and image else image
    if isinstance(first, PIL.Image.Image):
        return int(first.height), int(first.width)
    if isinstance(first, np.ndarray):
        if first.ndim == 2:
            return int(first.shape[0]), int(first.shape[1])
        return (
            (int(first.shape[0]), int(first.shape[1]))
            if first.ndim == 3
            else (int(first.shape[1]), int(first.shape[2]))
        )
    if isinstance(first, torch.Tensor) and first.ndim >= 2:
        return int(first.shape[-2]), int(first.shape[-1])
    return None


def check_image_size(image: Any, minimum: int, name: str, pipeline: str) -> None:
    """An image input is at least ``minimum`` pixels high and wide (one latent pixel), and finite.

    :raises ValueError: naming the input and its size.
    """
    if image is None:
        return
    hw = image_hw(image)
    if hw is not None and (hw[0] < minimum or hw[1] < minimum):
        raise ValueError(
            f"{pipeline}: {name} is {hw[0]}x{hw[1]} pixels, smaller than one latent pixel ({minimum}x{minimum}); "
            "pass a larger image"
        )
    check_finite(image, name, pipeline)


def check_steps(num_inference_steps: Any, pipeline: str, *, custom: bool = False) -> None:
    """``num_inference_steps`` is a positive int (unless custom ``timesteps`` / ``sigmas`` replace it)."""
    if custom and num_inference_steps is None:
        return
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, numbers.Integral):
        raise ValueError(f"{pipeline}: num_inference_steps must be a positive int, got {num_inference_steps!r}")
    if num_inference_steps < 1:
        raise ValueError(f"{pipeline}: num_inference_steps must be at least 1, got {num_inference_steps}")


# -- where a schedule is cut -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ScheduleCut:
    """The part of a scheduler's schedule one run takes, cut only between whole steps.

    ``timesteps`` are the positions to run (``scheduler.timesteps[begin_index:end_index]``);
    ``num_steps`` counts whole sampler steps in them (a second-order step takes ``order``
    positions), ``total_steps`` those of the full schedule.
    """

    timesteps: torch.Tensor
    begin_index: int
    end_index: int
    num_steps: int
    total_steps: int


def _fraction_cutoff(scheduler: Any, fraction: float) -> float:
    train = int(scheduler.config["num_train_timesteps"])
    return float(round(train - fraction * train))


def cut_schedule(
    scheduler: Any,
    *,
    strength: float | None = None,
    denoising_start: float | None = None,
    denoising_end: float | None = None,
    pipeline: str = "pipeline",
) -> ScheduleCut:
    """Cut ``scheduler.timesteps`` (already set) for a run at step boundaries only; sets the begin index.

    The schedule is counted in whole steps: a scheduler of ``order`` ``k`` (Heun, KDPM2: 2)
    spends ``k`` positions on a step (the last step may take fewer), and step ``j`` starts at
    position ``j * k`` with timestep ``scheduler.timesteps[j * k]``. This holds for schedules
    from a step count and from custom ``timesteps`` / ``sigmas`` alike.

    - ``strength`` (image-to-image): the last ``int(steps * strength)`` steps run
      (Meng et al. 2022, SDEdit: noise the image to that level, then denoise).
    - ``denoising_start`` (a refiner taking over, ``strength`` ignored): the steps whose
      starting timestep lies below ``(1 - denoising_start) * num_train_timesteps``.
    - ``denoising_end`` (a base handing over): only the steps whose starting timestep lies
      at or above ``(1 - denoising_end) * num_train_timesteps``.

    So a base run with ``denoising_end=f`` and a refiner run with ``denoising_start=f`` on the
    same schedule split it into complementary whole steps, and together equal one full run.

    :raises ValueError: when the cut leaves no step, saying which value to change.
    """
    timesteps = scheduler.timesteps
    order = max(int(getattr(scheduler, "order", 1) or 1), 1)
    length = len(timesteps)
    total = math.ceil(length / order)
    starts = timesteps[::order]
    first = 0
    if denoising_start is not None:
        cutoff = _fraction_cutoff(scheduler, denoising_start)
        first = int((starts >= cutoff).sum().item())
        if first >= total:
            raise ValueError(
                f"{pipeline}: denoising_start={denoising_start} leaves no denoising steps: all {total} steps of "
                f"the schedule start at or above timestep {cutoff:g}; lower denoising_start or use more steps"
            )
    elif strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 <= strength <= 1.0:
            raise ValueError(f"{pipeline}: strength must be a number in [0, 1], got {strength!r}")
        run = min(int(total * strength), total)
        if run < 1:
            raise ValueError(
                f"{pipeline}: strength={strength} leaves no denoising steps out of {total} "
                f"(int({total} * {strength}) = 0); raise strength to at least {1 / total:.3g} or raise "
                "num_inference_steps"
            )
        first = total - run
    last = total
    if denoising_end is not None:
        cutoff = _fraction_cutoff(scheduler, denoising_end)
        last = int((starts >= cutoff).sum().item())
        if last <= first:
            raise ValueError(
                f"{pipeline}: denoising_end={denoising_end} leaves no denoising steps (the run would end at step "
                f"{last} of {total} but starts at step {first}); raise denoising_end or use more steps"
            )
    begin, end = first * order, min(last * order, length)
    scheduler.set_begin_index(begin)
    return ScheduleCut(timesteps[begin:end], begin, end, last - first, total)


# -- the state a step callback sees ----------------------------------------------------------------


class DenoisingState:
    """Mixin: what a ``callback_on_step_end`` may read (and steer) on the pipeline during a run.

    ``guidance_scale``, ``guidance_rescale``, ``clip_skip``, ``cross_attention_kwargs``,
    ``do_classifier_free_guidance``, ``num_timesteps`` (positions of the schedule this run
    takes; kept after the run) and ``interrupt``. A callback may set ``pipe._guidance_scale``
    (from the next step) or ``pipe._interrupt = True`` (stop after this step, then decode).
    """

    _guidance_scale: float = 1.0
    _guidance_rescale: float = 0.0
    _clip_skip: int | None = None
    _cross_attention_kwargs: dict[str, Any] | None = None
    _num_timesteps: int = 0
    _interrupt: bool = False

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def clip_skip(self) -> int | None:
        return self._clip_skip

    @property
    def cross_attention_kwargs(self) -> dict[str, Any] | None:
        return self._cross_attention_kwargs

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether classifier-free guidance runs (``guidance_scale > 1``)."""
        return self._guidance_scale > 1

    @property
    def num_timesteps(self) -> int:
        """Positions of the schedule the current (or last) run takes."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt


def legacy_callback(
    callback: LegacyCallback | None, callback_steps: int | None, pipeline: str
) -> LegacyCallback | None:
    """Check the deprecated ``callback=`` / ``callback_steps=`` and warn once per call (``FutureWarning``).

    Pipelines call the returned ``callback(step, timestep, latents)`` after every whole step whose
    index is a multiple of ``callback_steps`` (see :func:`call_legacy`).

    :raises ValueError: when ``callback_steps`` is not a positive int.
    """
    if callback is None:
        return None
    steps = 1 if callback_steps is None else callback_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{pipeline}: callback_steps must be a positive int, got {callback_steps!r}")
    warnings.warn(
        f"{pipeline}: callback= and callback_steps= are deprecated; pass callback_on_step_end="
        "fn(pipe, step_index, timestep, tensors) -> tensors instead",
        FutureWarning,
        stacklevel=3,
    )
    if not callable(callback):
        raise TypeError(f"{pipeline}: callback must be callable, got {type(callback).__name__}")
    callback_steps_checked = steps

    def call(step: int, timestep: Any, latents: torch.Tensor) -> Any:
        if step % callback_steps_checked == 0:
            return callback(step, timestep, latents)
        return None

    return call


def call_legacy(
    callback: LegacyCallback | None, position: int, length: int, order: int, timestep: Any, latents: torch.Tensor
) -> None:
    """Call a legacy callback when ``position`` ends a whole step (with the step's index)."""
    if callback is not None and ((position + 1) % order == 0 or position == length - 1):
        callback(position // order, timestep, latents)
