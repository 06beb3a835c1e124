"""Paint by Example: inpaint the masked region with the object of an exemplar image.

Yang et al., *Paint by Example: Exemplar-based Image Editing with Diffusion Models* (CVPR 2023,
arXiv:2211.13227). A 9-channel inpainting UNet cross-attends to the exemplar's embedding
(:class:`~.paint_by_example_encoder.PaintByExampleImageEncoder`) instead of a prompt; the mask
it sees is 1 where the image is *kept*.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Denoise, StableDiffusionBase
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.images import ImageInput, is_image_input, preprocess_image, preprocess_mask
from difflux_stable_diffusion.prompts import PromptEmbeds, repeat_per_image

__all__ = ["PaintByExamplePipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None


class PaintByExamplePipeline(StableDiffusionBase):
    """Exemplar-guided inpainting: repaint where ``mask_image`` is white with what ``example_image`` shows."""

    model_cpu_offload_seq = "unet->vae"
    _exclude_from_cpu_offload = ("image_encoder",)
    _optional_components: ClassVar[tuple[str, ...]] = ("safety_checker",)
    _callback_tensor_inputs: tuple[str, ...] = ("latents", "prompt_embeds", "mask", "masked_image_latents")

    def __init__(
        self,
        vae: Any,
        image_encoder: Any,
        unet: Any,
        scheduler: Scheduler,
        safety_checker: Any,
        feature_extractor: Any,
        requires_safety_checker: bool = False,
    ) -> None:
        super().__init__()
        self.warn_about_safety_checker(safety_checker, feature_extractor, requires_safety_checker)
        self.register_modules(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                              safety_checker=safety_checker, feature_extractor=feature_extractor)

    def encode_example(self, example: Any, num_images_per_prompt: int, guidance: bool) -> PromptEmbeds:
        """The exemplar's ``(batch * images, 1, width)`` embeddings; the learned unconditional vector as the
        negative when guiding. PIL / numpy exemplars go through the feature extractor; tensors are used as given."""
        dtype = next(self.image_encoder.parameters()).dtype
        if not isinstance(example, torch.Tensor):
            if self.feature_extractor is None:
                raise ValueError(f"{type(self).__name__}: a PIL / numpy example_image needs a feature_extractor")
            example = self.feature_extractor(images=example, return_tensors="pt").pixel_values
        embeds, uncond = self.image_encoder(example.to(device=self.device, dtype=dtype), return_uncond_vector=True)
        embeds = repeat_per_image(embeds, num_images_per_prompt)
        negative = uncond.expand(embeds.shape[0], 1, -1).to(embeds) if guidance else None
        return PromptEmbeds(embeds, negative)

    def __call__(
        self,
        example_image: ImageInput | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        negative_prompt: Any = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = 1,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Repaint the white part of ``mask_image`` in ``image`` with the object of ``example_image``.

        The output has ``image``'s size (``height`` / ``width`` are accepted as in Diffusers but the image's
        size is used); ``negative_prompt`` is accepted and unused (the negative is the learned vector).
        :returns: ``StableDiffusionPipelineOutput(images, nsfw_content_detected)`` or a tuple.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        name = type(self).__name__
        if example_image is None or not is_image_input(example_image):
            raise TypeError(f"{name}: example_image must be a PIL image, numpy array or tensor, got {example_image!r}")
        args = Inputs.of(locals(), takes_prompt=False, needs_image=True, needs_mask=True, height=None, width=None)
        self.check_inputs(args)
        if image is None or mask_image is None:
            raise RuntimeError(f"{name}.__call__: internal check failed: image and mask_image are set")
        pixels = preprocess_image(image, multiple=self.vae_scale_factor)
        keep = 1 - preprocess_mask(mask_image, pixels.shape[-2], pixels.shape[-1], multiple=self.vae_scale_factor)
        batch = pixels.shape[0]
        total = batch * num_images_per_prompt
        opts = self.sampling(guidance_scale, 0.0, eta, generator, None, callback_on_step_end,
                             callback_on_step_end_tensor_inputs, legacy=callback,
                             legacy_steps=callback_steps if callback is not None else None)
        embeds = self.encode_example(example_image, num_images_per_prompt, opts.guidance)
        steps = self.schedule(num_inference_steps)
        dtype = embeds.embeds.dtype
        shape = self.latent_shape(total, pixels.shape[-2], pixels.shape[-1], self.vae.config.latent_channels)
        latents = self.prepare_latents(shape, dtype, generator, latents)
        mask, masked_latents = self.mask_latents(keep, pixels * keep, total, dtype, generator, opts.guidance)
        run = Denoise(steps, embeds.for_unet(), opts, extra={"mask": mask, "masked_image_latents": masked_latents})
        run.channels = ("masked_image_latents", "mask")
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)
