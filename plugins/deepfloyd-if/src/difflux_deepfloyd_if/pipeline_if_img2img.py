"""DeepFloyd IF image-to-image: stage I from a noised image, and its super-resolution stage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback

from ._base import Generator, ImageStart, Prompt
from .pipeline_if import SuperResolution

__all__ = ["IFImg2ImgPipeline", "IFImg2ImgSuperResolutionPipeline"]


class IFImg2ImgPipeline(ImageStart):
    """IF stage I image-to-image: ``image`` noised to ``strength`` of the schedule, then denoised towards ``prompt``."""

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: Any = None,
        strength: float = 0.7,
        num_inference_steps: int = 80,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 10.0,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int = 1,
        clean_caption: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Transform ``image`` towards ``prompt``.

        :param image: PIL images (resized, bicubic, to a short side of ``unet.config.sample_size`` pixels, the long
            side a multiple of 8, mapped to ``[-1, 1]``), or arrays ``(H, W, 3)`` / tensors ``(3, H, W)`` (or batches)
            in ``[-1, 1]``; one, or one per prompt.
        :param strength: the fraction of the schedule that runs, in ``[0, 1]`` (1 ignores the image).

        The other arguments are :class:`~difflux_deepfloyd_if.IFPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        return self.start_from_image(locals(), image)


class IFImg2ImgSuperResolutionPipeline(ImageStart, SuperResolution):
    """IF stage II image-to-image: ``original_image`` noised to ``strength``, denoised at its size, conditioned on
    ``image`` (stage I's image-to-image output) upscaled and noised to ``noise_level``."""

    def __call__(
        self,
        image: Any = None,
        original_image: Any = None,
        strength: float = 0.8,
        prompt: Prompt | None = None,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 4.0,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        noise_level: int = 250,
        clean_caption: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Upscale ``image`` into ``original_image``'s frame, towards ``prompt``.

        :param image: the lower stage's images (as :class:`~difflux_deepfloyd_if.IFSuperResolutionPipeline` takes
            them).
        :param original_image: the full-size image to start from (as :class:`IFImg2ImgPipeline`'s ``image``); the
            output has its size.

        The other arguments are :class:`IFImg2ImgPipeline`'s and ``noise_level`` is
        :class:`~difflux_deepfloyd_if.IFSuperResolutionPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        if image is None:
            raise ValueError(f"{type(self).__name__} needs image= (the lower stage's output)")
        return self.start_from_image(locals(), original_image, low_res=image)
