"""RePaintPipeline: inpainting with an unconditional DDPM UNet and the RePaint scheduler (Lugmayr et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from difflux.image import normalize, numpy_to_pt, pil_to_numpy
from difflux.pipeline_utils import StepCallback, check_image_size, prepare_noise, step_callback
from difflux_models.unet_2d import UNet2DModel

from ._base import Generator, ImageOutput, UNetSamplingPipeline, prev_sample
from .repaint_scheduler import RePaintScheduler

__all__ = ["RePaintPipeline", "preprocess_image", "preprocess_mask"]

ImageInput = torch.Tensor | PIL.Image.Image | Sequence[PIL.Image.Image] | Sequence[torch.Tensor]


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, PIL.Image.Image) else list(value)


def preprocess_image(image: ImageInput) -> torch.Tensor:
    """An ``NCHW`` tensor in ``[-1, 1]``: tensors pass through; PIL images are cropped by resizing to multiples of 8."""
    if isinstance(image, torch.Tensor):
        return image
    items = _as_list(image)
    if isinstance(items[0], torch.Tensor):
        return torch.cat(items)
    w, h = (v - v % 8 for v in items[0].size)
    resized = [i.resize((w, h), resample=PIL.Image.Resampling.LANCZOS) for i in items]
    return normalize(numpy_to_pt(pil_to_numpy(resized)))


def preprocess_mask(mask: ImageInput) -> torch.Tensor:
    """A ``{0, 1}`` mask (1 keeps the original pixel): tensors pass through; PIL masks are greyscaled,
    resized to multiples of 32 and thresholded at 0.5."""
    if isinstance(mask, torch.Tensor):
        return mask
    items = _as_list(mask)
    if isinstance(items[0], torch.Tensor):
        return torch.cat(items)
    w, h = (v - v % 32 for v in items[0].size)
    grey = np.stack([np.asarray(m.convert("L").resize((w, h), resample=PIL.Image.Resampling.NEAREST)) for m in items])
    binary = (grey.astype(np.float32) / 255.0 >= 0.5).astype(np.float32)
    return torch.from_numpy(binary)[:, None]


class RePaintPipeline(UNetSamplingPipeline):
    """Fill the pixels where ``mask_image`` is 0 so that they agree with the rest of ``image``."""

    scheduler: RePaintScheduler

    def __init__(self, unet: UNet2DModel, scheduler: RePaintScheduler) -> None:
        super().__init__(unet=unet, scheduler=scheduler)

    def repaint(
        self,
        image: torch.Tensor,
        original: torch.Tensor,
        mask: torch.Tensor,
        generator: Generator,
        callback: StepCallback | None,
        callback_inputs: Sequence[str],
    ) -> torch.Tensor:
        """Walk the RePaint schedule: denoise on the way down, re-noise (``undo_step``) on each jump up."""
        scheduler = self.scheduler
        t_last = scheduler.timesteps[0] + 1
        self._num_timesteps = len(scheduler.timesteps)
        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            if self._interrupt:
                break
            if t < t_last:
                model_output = self.unet(image, t).sample
                image = prev_sample(scheduler.step(model_output, t, image, original, mask, generator))
            else:
                image = scheduler.undo_step(image, t_last, generator)
            t_last = t
            if callback is not None:
                image = step_callback(self, callback, i, t, {"latents": image}, callback_inputs)["latents"]
        return image

    def __call__(
        self,
        image: ImageInput,
        mask_image: ImageInput,
        num_inference_steps: int = 250,
        eta: float = 0.0,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        generator: Generator = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImageOutput:
        """Inpaint ``image`` (tensor in ``[-1, 1]`` or PIL) where ``mask_image`` is 0 (black).

        With a list of generators, every random draw of output ``i`` (its starting noise and the
        noise of every step and jump back) comes from generator ``i``. Diffusers draws the chain
        of every output from the first generator of the list; difflux keeps one image per generator.

        :raises ValueError: for NaN in ``image`` / ``mask_image``, images of less than one pixel, or
            image and mask of different sizes.
        """
        name = type(self).__name__
        for key, value in (("image", image), ("mask_image", mask_image)):
            if value is None:
                raise ValueError(f"{name} needs {key}= (a tensor or a PIL image)")
            check_image_size(value, 1, key, name)
        device, dtype = self.device, self.unet.dtype
        original = preprocess_image(image).to(device=device, dtype=dtype)
        mask = preprocess_mask(mask_image).to(device=device, dtype=dtype)
        if original.shape[-2:] != mask.shape[-2:]:
            raise ValueError(
                f"{name}: image is {tuple(original.shape[-2:])} pixels but mask_image {tuple(mask.shape[-2:])}; "
                "pass a mask of the image's size"
            )
        batch_size = original.shape[0]
        self.check_inputs(
            batch_size, generator, output_type, callback_on_step_end_tensor_inputs,
            num_inference_steps=num_inference_steps, callback_on_step_end=callback_on_step_end,
        )
        noisy = prepare_noise(tuple(original.shape), generator=generator, device=device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, jump_length, jump_n_sample, device)
        self.scheduler.eta = eta
        result = self.repaint(
            noisy, original, mask, generator, callback_on_step_end, callback_on_step_end_tensor_inputs
        )
        return self.output(result, output_type, return_dict)
