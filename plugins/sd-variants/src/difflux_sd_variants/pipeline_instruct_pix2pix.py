"""InstructPix2Pix: edit an image by a written instruction, with SD 1.x and SDXL.

Brooks, Holynski and Efros, *InstructPix2Pix: Learning to Follow Image Editing Instructions*
(CVPR 2023, arXiv:2211.09800). The UNet sees the noisy latents concatenated with the input
image's latents (8 input channels). Guidance has two scales (eq. 3): with predictions for
(text + image), (image only) and (neither),

    eps = eps(0, 0) + s_I * (eps(I, 0) - eps(0, 0)) + s_T * (eps(I, T) - eps(I, 0)),

so each step runs three UNet batches: ``[text, negative, negative]`` prompts over
``[image, image, zeros]`` image latents.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Denoise, StableDiffusionBase, spread
from difflux_stable_diffusion._common import rescale_noise_cfg
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.images import ImageInput, preprocess_image
from difflux_stable_diffusion.pipeline_stable_diffusion_xl import StableDiffusionXLBase
from difflux_stable_diffusion.prompts import Prompt, PromptEmbeds

from ._sd import SDComponents

__all__ = ["StableDiffusionInstructPix2PixPipeline", "StableDiffusionXLInstructPix2PixPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None
Size = tuple[int, int]


class InstructPix2PixSteps(StableDiffusionBase):
    """The InstructPix2Pix parts both pipelines share: the two-scale guidance and the image latents."""

    _guidance_batches = 3
    _image_guidance_scale: float = 1.5

    @property
    def image_guidance_scale(self) -> float:
        """How strongly the edit follows the input image (``s_I``; at least 1 to guide)."""
        return self._image_guidance_scale

    def uses_guidance(self, guidance_scale: float) -> bool:
        """Guidance runs when ``guidance_scale > 1`` and ``image_guidance_scale >= 1`` (as Diffusers)."""
        return guidance_scale > 1.0 and self._image_guidance_scale >= 1.0

    def check_image_guidance(self, image_guidance_scale: float) -> None:
        """:raises ValueError: unless ``image_guidance_scale`` is a finite number; or when the UNet's input
        channels are not twice the VAE's latent channels."""
        name = type(self).__name__
        scale = image_guidance_scale
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
            raise ValueError(f"{name}: image_guidance_scale must be a finite number, got {scale!r}")
        latent, channels = self.vae.config.latent_channels, self.unet.config.in_channels
        if channels != 2 * latent:
            raise ValueError(
                f"{name}: the UNet takes {channels} input channels; InstructPix2Pix concatenates the latents and the "
                f"image latents ({latent} + {latent}); load an InstructPix2Pix UNet"
            )

    def guide(self, noise_pred: torch.Tensor, channels: int) -> torch.Tensor:
        """Two-scale guidance of ``[text + image, image, neither]`` predictions (paper eq. 3);
        ``guidance_rescale`` (SDXL) rescales towards the text prediction."""
        text, image, neither = noise_pred.chunk(3)
        guided = neither + self._guidance_scale * (text - image) + self._image_guidance_scale * (image - neither)
        if self._guidance_rescale > 0.0:
            guided = rescale_noise_cfg(guided, text, self._guidance_rescale)
        return guided

    def edit_image_latents(
        self, image: torch.Tensor, total: int, dtype: torch.dtype, guidance: bool, *, scale: bool = False
    ) -> torch.Tensor:
        """The input image's latents: the VAE posterior's mode, unscaled (``scale``: times the scaling factor,
        CosXL Edit); latents pass through. Batched to ``total``, and ``[image, image, zeros]`` when guiding."""
        image = image.to(device=self.device, dtype=dtype)
        if image.shape[1] == self.vae.config.latent_channels:
            latents = image
        else:
            upcast = self._upcast() and self.vae.dtype == torch.float16
            if upcast:
                self.vae.to(dtype=torch.float32)
            latents = self.vae.encode(image.to(self.vae.dtype)).latent_dist.mode().to(dtype)
            if upcast:
                self.vae.to(dtype=torch.float16)
        latents = spread(latents, total)
        if scale:
            latents = latents * self.vae.config.scaling_factor
        return torch.cat([latents, latents, torch.zeros_like(latents)]) if guidance else latents

    def edit_run(self, run: Denoise, image_latents: torch.Tensor) -> Denoise:
        """Condition the loop on the image latents (concatenated to the UNet input)."""
        run.extra["image_latents"] = image_latents
        run.channels = ("image_latents",)
        return run


def _three_way(embeds: PromptEmbeds) -> torch.Tensor:
    """``[positive, negative, negative]``: the text of the three InstructPix2Pix batches."""
    if embeds.negative is None:
        return embeds.embeds
    return torch.cat([embeds.embeds, embeds.negative, embeds.negative])


class StableDiffusionInstructPix2PixPipeline(InstructPix2PixSteps, SDComponents):
    """InstructPix2Pix with Stable Diffusion 1.x: ``prompt`` says how to change ``image``."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs: tuple[str, ...] = ("latents", "prompt_embeds", "image_latents")

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 7.5,
        image_guidance_scale: float = 1.5,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Edit ``image`` as ``prompt`` says; the output has the image's size (a multiple of 8).

        :param guidance_scale: ``s_T``, how strongly the edit follows the instruction.
        :param image_guidance_scale: ``s_I``, how closely the output keeps to ``image`` (1.5).
        :returns: ``StableDiffusionPipelineOutput(images, nsfw_content_detected)`` or a tuple.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        total = self.check_inputs(Inputs.of(locals(), needs_image=True)) * num_images_per_prompt
        self.check_image_guidance(image_guidance_scale)
        self._image_guidance_scale = image_guidance_scale
        opts = self.sampling_of(locals())
        embeds = self.prompt_of(locals(), opts)
        pixels = self.image_input(image)
        steps = self.schedule(num_inference_steps)
        dtype = embeds.embeds.dtype
        image_latents = self.edit_image_latents(pixels, total, dtype, opts.guidance)
        height, width = (s * self.vae_scale_factor for s in image_latents.shape[-2:])
        shape = self.latent_shape(total, height, width, self.vae.config.latent_channels)
        latents = self.prepare_latents(shape, dtype, generator, latents)
        run = Denoise(steps, _three_way(embeds), opts)
        latents = self.denoise(latents, self.edit_run(run, image_latents))
        return self.output(latents, output_type, return_dict, generator)


class StableDiffusionXLInstructPix2PixPipeline(InstructPix2PixSteps, StableDiffusionXLBase):
    """InstructPix2Pix with SDXL (and CosXL Edit: ``is_cosxl_edit=True`` scales the image latents)."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2")  # type: ignore[assignment]
    _callback_tensor_inputs: tuple[str, ...] = (  # type: ignore[assignment]  # SDXL's base names six
        "latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "image_latents"
    )

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        unet: Any,
        scheduler: Scheduler,
        force_zeros_for_empty_prompt: bool = True,
        add_watermarker: bool | None = None,
        is_cosxl_edit: bool | None = False,
    ) -> None:
        if add_watermarker:
            raise ValueError(
                "StableDiffusionXLInstructPix2PixPipeline: difflux does not apply the invisible watermark; "
                "pass add_watermarker=False (or leave it None)"
            )
        super(StableDiffusionXLBase, self).__init__()  # the SDXL components, without the SDXL-only options
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)

    def __call__(
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        image: ImageInput | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 100,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        image_guidance_scale: float = 1.5,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Edit ``image`` as ``prompt`` says, at ``height`` x ``width`` (default: the UNet's sample size).

        :param image_guidance_scale: ``s_I``, how closely the output keeps to ``image`` (1.5).
        :param guidance_rescale: rescale the guided prediction towards the text one (Lin et al. 2023).
        :returns: ``StableDiffusionXLPipelineOutput(images)`` or a tuple.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        total = self.check_inputs(self.inputs(locals(), needs_image=True)) * num_images_per_prompt
        self.check_image_guidance(image_guidance_scale)
        self._image_guidance_scale = image_guidance_scale
        height, width = self.default_size(height, width)
        opts = self.sampling_of(locals())
        embeds = self.encode_prompt(prompt, guidance=opts.guidance, num_images_per_prompt=num_images_per_prompt,
                                    prompt_2=prompt_2, negative_prompt=negative_prompt,
                                    negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
                                    negative_prompt_embeds=negative_prompt_embeds,
                                    pooled_prompt_embeds=pooled_prompt_embeds,
                                    negative_pooled_prompt_embeds=negative_pooled_prompt_embeds)
        if image is None:
            raise RuntimeError("StableDiffusionXLInstructPix2PixPipeline: internal check failed: image is not None")
        pixels = preprocess_image(image, height, width, multiple=self.vae_scale_factor,
                                  latent_channels=self.vae.config.latent_channels)
        steps = self.schedule(num_inference_steps, denoising_end=denoising_end)
        dtype = embeds.embeds.dtype
        image_latents = self.edit_image_latents(pixels, total, dtype, opts.guidance,
                                                scale=bool(self.config.get("is_cosxl_edit", False)))
        shape = self.latent_shape(total, height, width, self.vae.config.latent_channels)
        latents = self.prepare_latents(shape, dtype, generator, latents)
        ids = self.time_ids([*(original_size or (height, width)), *crops_coords_top_left,
                             *(target_size or (height, width))], self._projection_dim(embeds), dtype)
        pooled = embeds.pooled
        if pooled is None:
            raise RuntimeError("StableDiffusionXLInstructPix2PixPipeline: internal check failed: pooled is not None")
        if embeds.negative_pooled is not None:
            pooled = torch.cat([pooled, embeds.negative_pooled, embeds.negative_pooled])
        batches = 3 if opts.guidance else 1
        added = {"text_embeds": pooled.to(self.device), "time_ids": ids.repeat(total * batches, 1).to(self.device)}
        run = Denoise(steps, _three_way(embeds), opts, added_cond_kwargs=added)
        latents = self.denoise(latents, self.edit_run(run, image_latents))
        return self.output(latents, output_type, return_dict)
