"""Image variations: Stable Diffusion conditioned on a CLIP image embedding instead of text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import PIL.Image
import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback, check_batch
from difflux.protocols import Scheduler

from ._base import Denoise, StableDiffusionBase
from .checks import Inputs
from .prompts import PromptEmbeds, repeat_per_image

__all__ = ["StableDiffusionImageVariationPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None
ImageInput = PIL.Image.Image | Sequence[PIL.Image.Image] | torch.Tensor


class StableDiffusionImageVariationPipeline(StableDiffusionBase):
    """Variations of ``image``: its ``CLIPVisionModelWithProjection`` embedding is what the UNet attends to;
    the unconditional half of guidance is a zero embedding."""

    _optional_components = ("safety_checker", "feature_extractor")
    model_cpu_offload_seq = "image_encoder->unet->vae"

    def __init__(
        self,
        vae: Any,
        image_encoder: Any,
        unet: Any,
        scheduler: Scheduler,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__()
        self.warn_about_safety_checker(safety_checker, feature_extractor, requires_safety_checker)
        self.register_modules(
            vae=vae,
            image_encoder=image_encoder,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
        )

    def encode_image(self, image: ImageInput, num_images_per_prompt: int = 1, guidance: bool = False) -> PromptEmbeds:
        """CLIP image embeddings as a one-token sequence, repeated per image; zeros as the negative."""
        dtype = next(self.image_encoder.parameters()).dtype
        if not isinstance(image, torch.Tensor):
            if self.feature_extractor is None:
                raise ValueError(f"{type(self).__name__} needs a feature_extractor for PIL images; pass a tensor")
            image = self.feature_extractor(images=image, return_tensors="pt").pixel_values
        if not isinstance(image, torch.Tensor):
            raise RuntimeError(
                "StableDiffusionImageVariationPipeline.encode_image: internal check failed: "
                "isinstance(image, torch.Tensor)"
            )
        embeds = self.image_encoder(image.to(device=self.device, dtype=dtype)).image_embeds.unsqueeze(1)
        embeds = repeat_per_image(embeds, num_images_per_prompt)
        return PromptEmbeds(embeds, torch.zeros_like(embeds) if guidance else None)

    def __call__(
        self,
        image: ImageInput | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Generate variations of ``image``."""
        if not isinstance(image, (PIL.Image.Image, list, tuple, torch.Tensor)):
            raise TypeError(f"image must be a PIL image, a list of them or a tensor, got {type(image).__name__}")
        if isinstance(image, torch.Tensor):
            batch = image.shape[0] if image.ndim == 4 else 1
        else:
            batch = 1 if isinstance(image, PIL.Image.Image) else len(image)
        self.check_inputs(Inputs.of(locals(), takes_prompt=False, needs_image=True, generator=None), image_minimum=1)
        check_batch(batch * num_images_per_prompt, generator)
        height, width = self.default_size(height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(locals())
        embeds = self.encode_image(image, num_images_per_prompt, opts.guidance)
        steps = self.schedule(num_inference_steps)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        run = Denoise(steps, embeds.for_unet(), opts)
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)
