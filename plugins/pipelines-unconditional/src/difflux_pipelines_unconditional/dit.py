"""DiTPipeline: class-conditional latent diffusion with a diffusion transformer (Peebles & Xie 2023)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

import torch
from difflux.image import postprocess
from difflux.pipeline import DiffusionPipeline, ImagePipelineOutput
from difflux.pipeline_utils import (
    DenoisingState,
    StepCallback,
    class_label_tensor,
    cut_schedule,
    prepare_noise,
    sample_shape,
    step_callback,
)
from difflux.protocols import Scheduler
from difflux.schedulers import SchedulerMixin
from difflux_models.autoencoder_kl import AutoencoderKL
from difflux_models.transformers.dit import DiTTransformer2DModel

from ._base import OUTPUT_TYPES, Generator, ImageOutput, check_inputs, prev_sample

__all__ = ["DiTPipeline"]


def label_ids(id2label: Mapping[int, str] | Mapping[str, str] | None) -> dict[str, int]:
    """``{label: class id}`` from ImageNet-style ``id2label``, whose values list synonyms separated by commas."""
    labels: dict[str, int] = {}
    for key, value in (id2label or {}).items():
        for label in value.split(","):
            labels[label.strip()] = int(key)
    return dict(sorted(labels.items()))


class DiTPipeline(DenoisingState, DiffusionPipeline):
    """Generate images of the classes ``class_labels`` with classifier-free guidance (``guidance_scale``).

    ``id2label`` (saved in ``model_index.json``) names the classes; :meth:`get_label_ids` maps names to ids.
    """

    model_cpu_offload_seq = "transformer->vae"

    _callback_tensor_inputs: ClassVar[tuple[str, ...]] = ("latents",)
    _output_types: ClassVar[tuple[str, ...]] = OUTPUT_TYPES

    transformer: DiTTransformer2DModel
    vae: AutoencoderKL
    scheduler: SchedulerMixin

    def __init__(
        self,
        transformer: DiTTransformer2DModel,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
        id2label: dict[int, str] | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler)
        self.labels = label_ids(id2label)

    def get_label_ids(self, label: str | Sequence[str]) -> list[int]:
        """The class ids of one label name (``"white shark"``) or a list of them."""
        names = [label] if isinstance(label, str) else list(label)
        unknown = [n for n in names if n not in self.labels]
        if unknown:
            known = ", ".join(list(self.labels)[:10]) + (" ..." if len(self.labels) > 10 else "")
            raise ValueError(
                f"DiTPipeline: unknown label(s) {', '.join(map(repr, unknown))}; known labels: {known or 'none'} "
                "(pipe.labels maps every label to its id)"
            )
        return [self.labels[n] for n in names]

    # -- the steps of __call__ -----------------------------------------------------------------

    @property
    def _null_class(self) -> int:
        """The label id the transformer learned for "no class" (one past the last class)."""
        return int(self.transformer.config.get("num_embeds_ada_norm") or 1000)

    def check_inputs(
        self, batch_size: int, generator: Generator, output_type: str, tensor_inputs: Sequence[str], **more: Any
    ) -> None:
        """The unconditional pipelines' validator (:func:`~._base.check_inputs`)."""
        check_inputs(self, batch_size, generator, output_type, tensor_inputs, output_types=self._output_types, **more)

    def prepare_latents(self, batch_size: int, generator: Generator, latents: torch.Tensor | None) -> torch.Tensor:
        config = self.transformer.config
        shape = sample_shape(batch_size, config.in_channels, config.sample_size)
        return prepare_noise(
            shape, generator=generator, device=self.device, dtype=self.transformer.dtype, latents=latents
        )

    def predict(
        self, latents: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, guidance_scale: float
    ) -> torch.Tensor:
        """The guided model output for ``latents`` (both halves when guiding)."""
        scheduler = cast(Scheduler, self.scheduler)
        model_input = scheduler.scale_model_input(latents, t)
        timesteps = t.reshape(1).to(model_input.device) if isinstance(t, torch.Tensor) else torch.tensor([t])
        timesteps = timesteps.expand(model_input.shape[0])
        noise_pred = self.transformer(model_input, timestep=timesteps, class_labels=labels).sample
        channels = self.transformer.config.in_channels
        if guidance_scale > 1:
            eps, rest = noise_pred[:, :channels], noise_pred[:, channels:]
            cond, uncond = eps.chunk(2)
            guided = uncond + guidance_scale * (cond - uncond)
            noise_pred = torch.cat([torch.cat([guided, guided]), rest], dim=1)
        if self.transformer.config.out_channels // 2 == channels:  # learned variance: drop it
            noise_pred = noise_pred[:, :channels]
        return noise_pred  # type: ignore[no-any-return]

    def denoise(
        self,
        latents: torch.Tensor,
        labels: torch.Tensor,
        guidance_scale: float,
        num_inference_steps: int,
        generator: Generator,
        callback: StepCallback | None,
        callback_inputs: Sequence[str],
    ) -> torch.Tensor:
        """The reverse process; with guidance the batch is doubled (conditional, then unconditional)."""
        guided = guidance_scale > 1
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, self._null_class)])
        scheduler = cast(Scheduler, self.scheduler)
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        steps = cut_schedule(scheduler, pipeline="DiTPipeline").timesteps
        self._num_timesteps = len(steps)
        for i, t in enumerate(self.progress_bar(steps)):
            if self._interrupt:
                break
            model_input = torch.cat([latents, latents]) if guided else latents
            model_output = self.predict(model_input, t, labels, self._guidance_scale if guided else 1.0)
            half = model_output[: len(latents)]
            # the two guided halves are equal, so one step per image, with that image's generator
            latents = prev_sample(scheduler.step(half, t, latents, generator=generator))
            if callback is not None:
                latents = step_callback(self, callback, i, t, {"latents": latents}, callback_inputs)["latents"]
        return latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images in ``[-1, 1]`` through the VAE decoder."""
        return self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]

    def __call__(
        self,
        class_labels: int | Sequence[int] | torch.Tensor,
        guidance_scale: float = 4.0,
        generator: Generator = None,
        num_inference_steps: int = 50,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImageOutput:
        """One image per entry of ``class_labels`` (ids; :meth:`get_label_ids` turns names into ids)."""
        count = 1 if isinstance(class_labels, int) else len(class_labels)
        self.check_inputs(
            count, generator, output_type, callback_on_step_end_tensor_inputs, latents=latents,
            num_inference_steps=num_inference_steps, callback_on_step_end=callback_on_step_end,
        )
        self._guidance_scale, self._interrupt = guidance_scale, False
        latents = self.prepare_latents(count, generator, latents)
        labels = class_label_tensor(class_labels, count, self.device)
        latents = self.denoise(
            latents,
            labels,
            guidance_scale,
            num_inference_steps,
            generator,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
        )
        images: Any = latents if output_type == "latent" else postprocess(self.decode(latents), output_type)  # type: ignore[arg-type]
        return ImagePipelineOutput(images=images) if return_dict else (images,)
