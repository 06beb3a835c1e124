"""Latent Diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
arXiv:2112.10752): text-to-image with the LDMBert caption encoder, and 4x super-resolution.

Text-to-image runs on the Stable Diffusion base's loop (:meth:`StableDiffusionBase.denoise`) with
the UNet call as its ``predict`` step; super-resolution on the unconditional pipelines' loop
(:class:`difflux_pipelines_unconditional.UNetSamplingPipeline`) with the low-resolution image
concatenated to the latents. As in the published pipelines, text-to-image does not scale its
inputs for the scheduler (``scale_model_input``) nor its initial noise (``init_noise_sigma``): use
DDIM / DDPM / PNDM-style schedulers, as the published model does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import numpy as np
import PIL.Image
import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback, check_finite, prepare_noise
from difflux.protocols import Scheduler
from difflux.schedulers import SchedulerMixin
from difflux_pipelines_unconditional import UNetSamplingPipeline
from difflux_stable_diffusion._base import Denoise, ImagesOnly, StableDiffusionBase
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.prompts import Prompt, prompt_list, tokenize

__all__ = ["LDMSuperResolutionPipeline", "LDMTextToImagePipeline", "preprocess_low_res"]

Generator = torch.Generator | Sequence[torch.Generator] | None
Generators = torch.Generator | list[torch.Generator] | None

#: LDMBert's caption length in tokens (the published pipeline's fixed padding)
CAPTION_TOKENS = 77


class LDMTextToImagePipeline(ImagesOnly, StableDiffusionBase):
    """Text-to-image Latent Diffusion (``CompVis/ldm-text2im-large-256``).

    Components: ``vqvae`` (``VQModel`` or ``AutoencoderKL``), ``bert`` (:class:`~.ldm_bert.LDMBertModel`,
    ``["latent_diffusion", "LDMBertModel"]`` in ``model_index.json``), ``tokenizer`` (``BertTokenizer``),
    ``unet`` (``UNet2DConditionModel``), ``scheduler``.
    """

    model_cpu_offload_seq = "bert->unet->vqvae"
    _optional_components: ClassVar[tuple[str, ...]] = ()
    _callback_tensor_inputs: tuple[str, ...] = ("latents", "prompt_embeds", "negative_prompt_embeds")

    vqvae: Any
    bert: Any

    def __init__(self, vqvae: Any, bert: Any, tokenizer: Any, unet: Any, scheduler: Scheduler) -> None:
        super().__init__()
        self.register_modules(vqvae=vqvae, bert=bert, tokenizer=tokenizer, unet=unet, scheduler=scheduler)

    @property
    def vae_scale_factor(self) -> int:
        return int(2 ** (len(self.vqvae.config.block_out_channels) - 1))

    def uses_guidance(self, guidance_scale: float) -> bool:
        """Guidance runs whenever ``guidance_scale != 1`` (as the published pipeline does)."""
        return guidance_scale != 1.0

    def encode(self, texts: list[str], guidance: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LDMBert's last hidden state ``(batch, 77, width)`` of the captions, and of empty captions when guiding."""

        def run(captions: list[str], warn: bool) -> torch.Tensor:
            ids = tokenize(self.tokenizer, captions, CAPTION_TOKENS, warn=warn).input_ids.to(self.device)
            out: torch.Tensor = self.bert(ids)[0]
            return out

        negative = run([""] * len(texts), False) if guidance else None
        return run(texts, True), negative

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
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
        """Generate one image per caption.

        :param prompt: a caption or a list of captions (required).
        :param height: pixels, a multiple of 8 (default ``unet.config.sample_size * vae_scale_factor``); the
            latents are ``height / 8`` high, as in the published pipeline.
        :param guidance_scale: classifier-free guidance weight; any value other than 1 guides.
        :param eta: DDIM's eta (noise is drawn from ``generator``).
        :param generator: one, or one per caption.
        :returns: ``ImagePipelineOutput(images=...)`` (``"pil"``, ``"np"`` ``(batch, h, w, 3)`` float32 in
            ``[0, 1]``, ``"pt"`` ``(batch, 3, h, w)``, ``"latent"``) or ``(images,)``.
        :raises ValueError | TypeError: for bad input, before any model runs.
        """
        name = type(self).__name__
        if prompt is None:
            raise ValueError(f"{name}: pass prompt (a string or a list of strings)")
        size = int(self.unet.config.sample_size) * self.vae_scale_factor
        height, width = height or size, width or size
        batch = self.check_inputs(Inputs.of(locals()))
        shape = (batch, int(self.unet.config.in_channels), height // 8, width // 8)
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"{name}: latents have shape {tuple(latents.shape)}, expected {shape}")
        opts = self.sampling_of(locals())
        texts = prompt_list(prompt) or []
        embeds, negative = self.encode(texts, opts.guidance)
        steps = self.schedule(num_inference_steps)
        latents = prepare_noise(shape, generator=generator, device=self.device, dtype=embeds.dtype, latents=latents)
        context = embeds if negative is None else torch.cat([negative, embeds])

        def predict(i: int, t: torch.Tensor, model_input: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            return self.unet(model_input, t, encoder_hidden_states=cond).sample  # type: ignore[no-any-return]

        latents = self.denoise(latents, Denoise(steps, context, opts, predict=predict), negative)
        if output_type == "latent":
            return self.wrap_output(latents, None, return_dict)
        image = self.vqvae.decode(latents / self.vqvae.config.scaling_factor).sample
        return self.wrap_output(self.finish(image, output_type), None, return_dict)


def preprocess_low_res(image: PIL.Image.Image | torch.Tensor, pipeline: str) -> torch.Tensor:
    """The low-resolution input as ``(batch, 3, h, w)`` float in ``[-1, 1]``: a PIL image is cut down to
    multiples of 32 pixels (Lanczos resize) and scaled; a tensor (already in ``[-1, 1]``) passes.

    :raises TypeError: for any other input. :raises ValueError: for a tensor that is not ``(batch, 3, h, w)``.
    """
    if isinstance(image, PIL.Image.Image):
        w, h = (v - v % 32 for v in image.size)
        if w < 32 or h < 32:
            raise ValueError(f"{pipeline}: image is {image.size[0]}x{image.size[1]}; it needs at least 32x32 pixels")
        resized = image.convert("RGB").resize((w, h), resample=PIL.Image.Resampling.LANCZOS)
        pixels = np.asarray(resized, dtype=np.float32)
        return torch.from_numpy(pixels / 255.0).permute(2, 0, 1)[None] * 2.0 - 1.0
    if isinstance(image, torch.Tensor):
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(
                f"{pipeline}: an image tensor must be (batch, 3, h, w) in [-1, 1], got {tuple(image.shape)}"
            )
        check_finite(image, "image", pipeline)
        return image
    raise TypeError(f"{pipeline}: image must be a PIL image or a torch.Tensor, got {type(image).__name__}")


class LDMSuperResolutionPipeline(UNetSamplingPipeline):
    """4x super-resolution with Latent Diffusion (``CompVis/ldm-super-resolution-4x-openimages``).

    The UNet (``UNet2DModel``) denoises latents the size of the low-resolution image with the image
    concatenated as extra input channels; the VQ-VAE (``vqvae``) decodes them to 4x the size.
    """

    model_cpu_offload_seq = "unet->vqvae"

    vqvae: Any
    _low_res: torch.Tensor | None = None

    def __init__(self, vqvae: Any, unet: Any, scheduler: SchedulerMixin) -> None:
        super().__init__(unet=unet, scheduler=scheduler)
        self.register_modules(vqvae=vqvae)

    def predict(self, sample: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """The UNet on ``[latents, low-resolution image]`` (scaled together for the scheduler)."""
        if self._low_res is None:
            raise RuntimeError("LDMSuperResolutionPipeline.predict: internal check failed: no low-resolution image")
        model_input = torch.cat([sample, self._low_res], dim=1)
        model_input = cast(Scheduler, self.scheduler).scale_model_input(model_input, t)
        return self.unet(model_input, t).sample  # type: ignore[no-any-return]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to images through the VQ-VAE (quantizing first), clamped to ``[-1, 1]``."""
        image: torch.Tensor = self.vqvae.decode(latents).sample
        return image.clamp(-1.0, 1.0)

    def __call__(
        self,
        image: PIL.Image.Image | torch.Tensor | None = None,
        batch_size: int = 1,
        num_inference_steps: int = 100,
        eta: float = 0.0,
        generator: Generators = None,
        output_type: str = "pil",
        return_dict: bool = True,
        *,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Upscale ``image`` (a PIL image, or ``(batch, 3, h, w)`` in ``[-1, 1]``); ``batch_size`` is ignored
        (the batch is the image's), as in the published pipeline.

        :returns: images 4x the input size (``"pil"``, ``"np"``, ``"pt"``, or the ``"latent"`` latents).
        :raises ValueError | TypeError: for bad input, before any model runs.
        """
        name = type(self).__name__
        if image is None:
            raise ValueError(f"{name}: pass image= (a PIL image or a (batch, 3, h, w) tensor in [-1, 1])")
        low_res = preprocess_low_res(image, name)
        batch = low_res.shape[0]
        self.check_inputs(
            batch, generator, output_type, callback_on_step_end_tensor_inputs, latents=latents,
            num_inference_steps=num_inference_steps, callback_on_step_end=callback_on_step_end,
        )  # fmt: skip
        shape = (batch, int(self.unet.config.in_channels) // 2, *low_res.shape[-2:])
        if latents is not None and tuple(latents.shape) != shape:
            raise ValueError(f"{name}: latents have shape {tuple(latents.shape)}, expected {shape}")
        dtype = self.unet.dtype
        noise = prepare_noise(shape, generator=generator, device=self.device, dtype=dtype, latents=latents)
        self.set_schedule(num_inference_steps)
        noise = noise * cast(Scheduler, self.scheduler).init_noise_sigma
        self._low_res = low_res.to(device=self.device, dtype=dtype)
        try:
            latents = self.denoise(
                noise, class_labels=None, step_options={"eta": eta, "generator": generator},
                callback=callback_on_step_end, callback_inputs=callback_on_step_end_tensor_inputs,
            )  # fmt: skip
        finally:
            self._low_res = None
        return self.output(latents, output_type, return_dict)
