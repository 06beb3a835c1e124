"""DeepFloyd IF inpainting: only the masked region is regenerated, at stage I and at its super-resolution stage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback

from ._base import Generator, ImageStart, Prompt
from .pipeline_if import SuperResolution

__all__ = ["IFInpaintingPipeline", "IFInpaintingSuperResolutionPipeline"]


class IFInpaintingPipeline(ImageStart):
    """IF stage I inpainting: where ``mask_image`` is white the image is noised and regenerated towards ``prompt``;
    elsewhere every step keeps the samples as they were (so the start image stays)."""

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: Any = None,
        mask_image: Any = None,
        strength: float = 1.0,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 7.0,
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
        """Repaint the masked part of ``image``.

        :param mask_image: white (>= 0.5) where to repaint: PIL masks (resized like ``image``), arrays ``(H, W)``
            or tensors ``(H, W)`` / ``(B, H, W)`` / ``(B, 1, H, W)`` in ``[0, 1]``; one, or one per prompt, the
            size of the (resized) image.

        The other arguments are :class:`~difflux_deepfloyd_if.IFImg2ImgPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        return self.start_from_image(locals(), image, mask_image)


class IFInpaintingSuperResolutionPipeline(ImageStart, SuperResolution):
    """IF stage II inpainting: ``original_image``'s masked part regenerated at full size, conditioned on ``image``
    (stage I's inpainting output) upscaled and noised to ``noise_level``."""

    def __call__(
        self,
        image: Any = None,
        original_image: Any = None,
        mask_image: Any = None,
        strength: float = 0.8,
        prompt: Prompt | None = None,
        num_inference_steps: int = 100,
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
        noise_level: int = 0,
        clean_caption: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Repaint the masked part of ``original_image`` at full size.

        The arguments are :class:`IFInpaintingPipeline`'s, with ``image`` / ``original_image`` / ``noise_level``
        as :class:`~difflux_deepfloyd_if.IFImg2ImgSuperResolutionPipeline` takes them.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        if image is None:
            raise ValueError(f"{type(self).__name__} needs image= (the lower stage's output)")
        return self.start_from_image(locals(), original_image, mask_image, low_res=image)
