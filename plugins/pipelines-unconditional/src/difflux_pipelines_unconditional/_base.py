"""What the pixel-space samplers (DDPM, DDIM, PNDM) share: a UNet, a scheduler, and one loop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

import torch
from difflux.image import postprocess
from difflux.pipeline import DiffusionPipeline, ImagePipelineOutput
from difflux.pipeline_utils import (
    DenoisingState,
    StepCallback,
    check_batch,
    check_callback_inputs,
    check_finite,
    check_output_type,
    check_steps,
    class_label_tensor,
    cut_schedule,
    prepare_noise,
    sample_shape,
    step_callback,
)
from difflux.protocols import Scheduler
from difflux.schedulers import SchedulerMixin, SchedulerOutput
from difflux_models.unet_2d import UNet2DModel

__all__ = ["OUTPUT_TYPES", "Generator", "ImageOutput", "Labels", "UNetSamplingPipeline", "check_inputs", "prev_sample"]

Generator = torch.Generator | list[torch.Generator] | None
Labels = int | Sequence[int] | torch.Tensor | None
ImageOutput = ImagePipelineOutput | tuple[Any, ...]


#: what ``output_type`` may be in the image pipelines here; ``"latent"`` is the denoised sample as it is
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def prev_sample(out: SchedulerOutput | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The next sample from what ``scheduler.step`` returned."""
    return out.prev_sample if isinstance(out, SchedulerOutput) else out[0]


def check_inputs(
    pipe: Any,
    batch_size: int,
    generator: Generator,
    output_type: str,
    callback_on_step_end_tensor_inputs: Sequence[str],
    *,
    output_types: Sequence[str] = OUTPUT_TYPES,
    latents: torch.Tensor | None = None,
    num_inference_steps: Any = None,
    timesteps: Sequence[int] | None = None,
    callback_on_step_end: Any = None,
) -> None:
    """The one validator of the unconditional pipelines, run before any model: batch and generators,
    ``output_type``, step count, callback names, and ``latents`` (a finite tensor).

    :raises ValueError | TypeError: naming the argument and what to pass.
    """
    name = type(pipe).__name__
    check_batch(batch_size, generator)
    check_output_type(output_type, output_types, name)
    if num_inference_steps is not None or timesteps is None:
        check_steps(num_inference_steps, name, custom=timesteps is not None)
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise TypeError(f"{name}: callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")
    check_callback_inputs(callback_on_step_end_tensor_inputs, pipe._callback_tensor_inputs, name)
    if latents is not None:
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"{name}: latents must be a torch.Tensor, got {type(latents).__name__}")
        check_finite(latents, "latents", name)


class UNetSamplingPipeline(DenoisingState, DiffusionPipeline):
    """Base of the pipelines that denoise pixels with ``unet`` and ``scheduler``; not registered itself.

    The concrete classes only choose ``__call__``'s defaults and the extra arguments of
    ``scheduler.step``. A class-conditional UNet (``num_class_embeds`` set) takes ``class_labels``.
    """

    model_cpu_offload_seq = "unet"

    _callback_tensor_inputs: ClassVar[tuple[str, ...]] = ("latents",)
    #: What ``output_type`` may be; ``"latent"`` returns the denoised sample before postprocessing.
    _output_types: ClassVar[tuple[str, ...]] = OUTPUT_TYPES

    unet: UNet2DModel
    scheduler: SchedulerMixin

    def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    # -- the steps of __call__ -----------------------------------------------------------------

    def check_inputs(
        self,
        batch_size: int,
        generator: Generator,
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str],
        **more: Any,
    ) -> None:
        """:func:`check_inputs` with this pipeline's output types (``more``: its keyword arguments)."""
        check_inputs(
            self, batch_size, generator, output_type, callback_on_step_end_tensor_inputs,
            output_types=self._output_types, **more,
        )
        self._interrupt = False

    def prepare_class_labels(self, class_labels: Labels, batch_size: int) -> torch.Tensor | None:
        """Labels for a class-conditional UNet; ``None`` for an unconditional one."""
        conditional = self.unet.config.get("num_class_embeds") is not None or (
            self.unet.config.get("class_embed_type") is not None
        )
        name = type(self).__name__
        if class_labels is None:
            if conditional:
                raise ValueError(
                    f"{name}: this UNet is class-conditional (num_class_embeds="
                    f"{self.unet.config.get('num_class_embeds')}); pass class_labels=, one int or one per image"
                )
            return None
        if not conditional:
            raise ValueError(f"{name}: class_labels given, but this UNet is unconditional (no num_class_embeds)")
        labels = class_label_tensor(class_labels, batch_size, self.device)
        classes = self.unet.config.get("num_class_embeds")
        if classes is not None and bool(((labels < 0) | (labels >= classes)).any()):
            raise ValueError(f"{name}: class_labels must lie in [0, {classes}), got {labels.tolist()}")
        return labels

    def prepare_latents(
        self, batch_size: int, generator: Generator, latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Gaussian noise shaped like a batch of UNet inputs (the start of the reverse process)."""
        config = self.unet.config
        shape = sample_shape(batch_size, config.in_channels, config.sample_size)
        return prepare_noise(
            shape,
            generator=generator,
            device=self.device,
            dtype=self.unet.dtype,
            init_noise_sigma=cast(Scheduler, self.scheduler).init_noise_sigma,
            latents=latents,
        )

    def predict(self, sample: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """One UNet evaluation."""
        model_input = cast(Scheduler, self.scheduler).scale_model_input(sample, t)
        if class_labels is None:
            return self.unet(model_input, t).sample  # type: ignore[no-any-return]
        return self.unet(model_input, t, class_labels=class_labels).sample  # type: ignore[no-any-return]

    def set_schedule(self, num_inference_steps: int, timesteps: Sequence[int] | None = None) -> torch.Tensor:
        """Set the scheduler's timesteps for this run (``num_inference_steps`` of them, or the given ones),
        with its begin index (:func:`difflux.pipeline_utils.cut_schedule`); returns them."""
        scheduler = cast(Scheduler, self.scheduler)
        if timesteps is not None:
            scheduler.set_timesteps(timesteps=list(timesteps), device=self.device)
        else:
            scheduler.set_timesteps(num_inference_steps, device=self.device)
        steps = cut_schedule(scheduler, pipeline=type(self).__name__).timesteps
        self._num_timesteps = len(steps)
        return steps

    def denoise(
        self,
        latents: torch.Tensor,
        *,
        class_labels: torch.Tensor | None,
        step_options: Mapping[str, Any],
        callback: StepCallback | None,
        callback_inputs: Sequence[str],
    ) -> torch.Tensor:
        """The reverse process: one scheduler step per timestep of the schedule, from noise to a sample."""
        scheduler = cast(Scheduler, self.scheduler)
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            if self._interrupt:
                break
            model_output = self.predict(latents, t, class_labels)
            latents = prev_sample(scheduler.step(model_output, t, latents, **step_options))
            if callback is not None:
                latents = step_callback(self, callback, i, t, {"latents": latents}, callback_inputs)["latents"]
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The denoised sample as images in ``[-1, 1]`` (pixel-space pipelines: unchanged)."""
        return latents

    def output(self, latents: torch.Tensor, output_type: str, return_dict: bool) -> ImageOutput:
        """Pixel values in ``[0, 1]`` as PIL images, an ``NHWC`` array or an ``NCHW`` tensor; or the latents."""
        if output_type == "latent":
            images: Any = latents
        else:
            images = postprocess(self.decode(latents), output_type)  # type: ignore[arg-type]
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def sample(
        self,
        *,
        batch_size: int,
        generator: Generator,
        num_inference_steps: int,
        class_labels: Labels,
        latents: torch.Tensor | None,
        output_type: str,
        return_dict: bool,
        step_options: Mapping[str, Any],
        callback_on_step_end: StepCallback | None,
        callback_on_step_end_tensor_inputs: Sequence[str],
        timesteps: Sequence[int] | None = None,
    ) -> ImageOutput:
        """check → set the schedule → prepare latents → denoise loop → postprocess, for the concrete ``__call__``."""
        self.check_inputs(
            batch_size, generator, output_type, callback_on_step_end_tensor_inputs, latents=latents,
            num_inference_steps=num_inference_steps, timesteps=timesteps, callback_on_step_end=callback_on_step_end,
        )
        # the schedule first: a sigma scheduler's init_noise_sigma depends on it
        self.set_schedule(num_inference_steps, timesteps)
        latents = self.prepare_latents(batch_size, generator, latents)
        labels = self.prepare_class_labels(class_labels, batch_size)
        latents = self.denoise(
            latents,
            class_labels=labels,
            step_options=step_options,
            callback=callback_on_step_end,
            callback_inputs=callback_on_step_end_tensor_inputs,
        )
        return self.output(latents, output_type, return_dict)
