"""Depth-guided image-to-image (Stable Diffusion 2 depth): the UNet also sees the image's depth map."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback, check_finite
from difflux.protocols import Scheduler

from ._base import ImagesOnly, StableDiffusionBase
from .checks import Inputs
from .images import ImageInput
from .pipeline_stable_diffusion import Generator, _StableDiffusion
from .prompts import Prompt

__all__ = ["StableDiffusionDepth2ImgPipeline"]


def _image_size(image: Any) -> tuple[int, int]:
    """``(height, width)`` of the first image of ``image`` (PIL, ``HWC`` array or ``CHW`` / ``NCHW`` tensor)."""
    first = image[0] if isinstance(image, (list, tuple)) else image
    if isinstance(first, PIL.Image.Image):
        return first.height, first.width
    if isinstance(first, np.ndarray):
        return (first.shape[0], first.shape[1]) if first.ndim == 3 else (first.shape[1], first.shape[2])
    return int(first.shape[-2]), int(first.shape[-1])


class StableDiffusionDepth2ImgPipeline(ImagesOnly, _StableDiffusion):
    """Image-to-image conditioned on depth: a depth map (estimated by ``depth_estimator``, or given) is
    concatenated to the latents, so the result keeps the image's layout."""

    _optional_components = ("depth_estimator", "feature_extractor")
    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds", "depth_mask")
    depth_estimator: Any

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Scheduler,
        depth_estimator: Any = None,
        feature_extractor: Any = None,
    ) -> None:
        StableDiffusionBase.__init__(self)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            depth_estimator=depth_estimator,
            feature_extractor=feature_extractor,
        )

    def depth_conditioning(
        self, image: Any, depth_map: torch.Tensor | None, total: int, dtype: torch.dtype, guidance: bool
    ) -> torch.Tensor:
        """The depth map at latent size, scaled to ``[-1, 1]`` per image, batched (doubled when guiding)."""
        height, width = _image_size(image)
        if depth_map is None:
            if self.depth_estimator is None or self.feature_extractor is None:
                raise ValueError(f"{type(self).__name__} has no depth_estimator / feature_extractor; pass depth_map=")
            images = list(image) if isinstance(image, (list, tuple)) else [image]
            pixels = self.feature_extractor(images=images, return_tensors="pt").pixel_values
            depth_map = self.depth_estimator(pixels.to(device=self.device, dtype=dtype)).predicted_depth
        if depth_map is None:
            raise RuntimeError(
                "StableDiffusionDepth2ImgPipeline.depth_conditioning: internal check failed: depth_map is not None"
            )
        size = (height // self.vae_scale_factor, width // self.vae_scale_factor)
        depth = torch.nn.functional.interpolate(
            depth_map.to(device=self.device, dtype=dtype).unsqueeze(1), size=size, mode="bicubic", align_corners=False
        )
        low = torch.amin(depth, dim=[1, 2, 3], keepdim=True)
        high = torch.amax(depth, dim=[1, 2, 3], keepdim=True)
        depth = (2.0 * (depth - low) / (high - low) - 1.0).to(dtype)
        if depth.shape[0] < total:
            depth = depth.repeat(total // depth.shape[0], 1, 1, 1)
        return torch.cat([depth] * 2) if guidance else depth

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        depth_map: torch.Tensor | None = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Transform ``image`` guided by ``prompt`` while keeping its depth."""
        total = self.check_inputs(Inputs.of(locals(), needs_image=True)) * num_images_per_prompt
        if depth_map is not None:
            check_finite(depth_map, "depth_map", type(self).__name__)
        opts = self.sampling_of(locals())
        embeds = self.prompt_of(locals(), opts)
        dtype = embeds.embeds.dtype
        depth = self.depth_conditioning(image, depth_map, total, dtype, opts.guidance)
        steps = self.schedule(num_inference_steps, strength=strength)
        latents = self.image_latents(self.image_input(image), total, dtype, generator, per_output=True)
        latents = self.add_noise(latents, steps, generator)
        run = self.run(steps, embeds, opts, total)
        run.extra["depth_mask"], run.channels = depth, ("depth_mask",)
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)
