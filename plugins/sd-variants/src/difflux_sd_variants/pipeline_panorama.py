"""MultiDiffusion panoramas: one wide image from a UNet trained on squares.

Bar-Tal, Yariv, Lipman and Dekel, *MultiDiffusion: Fusing Diffusion Paths for Controlled Image
Generation* (ICML 2023, arXiv:2302.08113). Each step denoises overlapping 64x64-latent windows
("views", eq. 7) with the SD step, each with its own scheduler state, and sets every latent
pixel to the mean of the views that cover it (the closed-form solution of eq. 5). With
``circular_padding`` the views wrap around horizontally, for 360-degree panoramas.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux_stable_diffusion._base import Denoise
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.prompts import Prompt

from ._sd import SDComponents

__all__ = ["StableDiffusionPanoramaPipeline", "panorama_views"]

Generator = torch.Generator | Sequence[torch.Generator] | None
#: a view: ``(row start, row end, column start, column end)`` in latent pixels (the end may pass the
#: right edge when the panorama wraps around)
View = tuple[int, int, int, int]


def panorama_views(height: int, width: int, window: int = 64, stride: int = 8, circular: bool = False) -> list[View]:
    """The windows MultiDiffusion denoises, over a ``height`` x ``width`` latent (MultiDiffusion eq. 7).

    Windows of ``window`` latent pixels every ``stride``; one window along a side that is not longer than
    ``window``. With ``circular``, windows start at every stride along the width and wrap past the right edge.
    """
    rows = (height - window) // stride + 1 if height > window else 1
    if circular:
        cols = width // stride if width > window else 1
    else:
        cols = (width - window) // stride + 1 if width > window else 1
    views = []
    for i in range(rows * cols):
        top, left = (i // cols) * stride, (i % cols) * stride
        views.append((top, top + window, left, left + window))
    return views


def _crop(latents: torch.Tensor, view: View) -> torch.Tensor:
    top, bottom, left, right = view
    width = latents.shape[-1]
    if right <= width:
        return latents[:, :, top:bottom, left:right]
    return torch.cat([latents[:, :, top:bottom, left:], latents[:, :, top:bottom, : right - width]], dim=-1)


def _accumulate(value: torch.Tensor, count: torch.Tensor, part: torch.Tensor, view: View) -> None:
    top, bottom, left, right = view
    width = value.shape[-1]
    if right <= width:
        value[:, :, top:bottom, left:right] += part
        count[:, :, top:bottom, left:right] += 1
        return
    head = width - left
    value[:, :, top:bottom, left:] += part[..., :head]
    value[:, :, top:bottom, : right - width] += part[..., head:]
    count[:, :, top:bottom, left:] += 1
    count[:, :, top:bottom, : right - width] += 1


class StableDiffusionPanoramaPipeline(SDComponents):
    """Text-to-panorama with Stable Diffusion 1.x / 2.x by MultiDiffusion (default 512 x 2048 pixels)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _views: list[list[View]]
    _view_states: list[dict[str, Any]]
    _circular: bool = False

    def denoise_step(
        self, run: Denoise, i: int, t: torch.Tensor, latents: torch.Tensor, tensors: dict[str, torch.Tensor | None]
    ) -> torch.Tensor:
        """One MultiDiffusion step: the SD step on each batch of views (each with its own scheduler state),
        then every latent pixel set to the mean over the views covering it."""
        value, count = torch.zeros_like(latents), torch.zeros_like(latents)
        embeds = tensors["prompt_embeds"]
        if embeds is None:
            raise RuntimeError("StableDiffusionPanoramaPipeline.denoise_step: internal check failed: embeds")
        batch = latents.shape[0]
        halves = embeds.chunk(2) if embeds.shape[0] == 2 * batch else (embeds,)
        for j, views in enumerate(self._views):
            self.scheduler.__dict__.update(copy.deepcopy(self._view_states[j]))
            crops = torch.cat([_crop(latents, view) for view in views])
            part = {**tensors, "prompt_embeds": torch.cat([h.repeat(len(views), 1, 1) for h in halves])}
            stepped = super().denoise_step(run, i, t, crops, part)
            self._view_states[j] = copy.deepcopy(self.scheduler.__dict__)
            for k, view in enumerate(views):
                _accumulate(value, count, stepped[k * batch : (k + 1) * batch], view)
        return torch.where(count > 0, value / count, value)

    def decode(self, latents: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """Decode; a wrapping panorama is decoded with 8 latent columns of each edge on the other side
        (no seam), which are cut off again."""
        if not self._circular:
            return super().decode(latents, generator)
        pad = 8
        image = super().decode(torch.cat([latents[..., -pad:], latents, latents[..., :pad]], dim=-1), generator)
        cut = pad * self.vae_scale_factor
        return image[..., cut:-cut]

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = 512,
        width: int | None = 2048,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 7.5,
        view_batch_size: int = 1,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        circular_padding: bool = False,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Generate a ``height`` x ``width`` panorama for ``prompt``.

        :param view_batch_size: views denoised in one UNet batch (more: faster, more memory).
        :param circular_padding: let the views wrap around horizontally (a seamless 360-degree panorama).
        :returns: ``StableDiffusionPipelineOutput(images, nsfw_content_detected)`` or a tuple.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        name = type(self).__name__
        batch = self.check_inputs(Inputs.of(locals()))
        size = view_batch_size
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"{name}: view_batch_size must be a positive int, got {size!r}")
        if not isinstance(circular_padding, bool):
            raise TypeError(f"{name}: circular_padding must be True or False, got {circular_padding!r}")
        height, width = self.default_size(height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(locals())
        embeds = self.prompt_of(locals(), opts)
        steps = self.schedule(num_inference_steps, timesteps)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        views = panorama_views(latents.shape[-2], latents.shape[-1], circular=circular_padding)
        self._views = [views[k : k + size] for k in range(0, len(views), size)]
        self._view_states = [copy.deepcopy(self.scheduler.__dict__) for _ in self._views]
        self._circular = circular_padding
        try:
            latents = self.denoise(latents, self.run(steps, embeds, opts, total), embeds.negative)
            return self.output(latents, output_type, return_dict, generator)
        finally:
            self._views, self._view_states, self._circular = [], [], False
