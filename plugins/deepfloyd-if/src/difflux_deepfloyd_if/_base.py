"""What every DeepFloyd IF pipeline shares: T5 prompts, pixel-space sampling on the SD base, IF's output.

Source: DeepFloyd IF (Shonenkov et al., 2023; github.com/deep-floyd/IF), a cascade in the style of
Imagen (Saharia et al. 2022, arXiv:2205.11487): a 64x64 pixel-space text-to-image UNet (stage I), then
super-resolution UNets conditioned on the noised, upscaled lower stage (stage II, 256x256). The UNets are
``UNet2DConditionModel``\\ s predicting noise and a learned variance (``out_channels = 2 * channels``);
the SD base guides the noise half and keeps the conditional variance. No VAE: the "latents" are pixels in
``[-1, 1]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from difflux.image import numpy_to_pil, pt_to_numpy
from difflux.outputs import BaseOutput
from difflux.pipeline_utils import check_finite
from difflux.torch_utils import randn_tensor
from difflux_pixart.prompts import encode_prompt_t5
from difflux_stable_diffusion._base import Denoise, StableDiffusionBase, spread
from difflux_stable_diffusion.checks import Inputs

__all__ = [
    "IFBase",
    "IFPipelineOutput",
    "ImageStart",
    "binary_mask",
    "pixels_as_given",
    "pixels_resized",
    "resize_short_side",
]

Prompt = str | Sequence[str]
Generator = torch.Generator | Sequence[torch.Generator] | None

#: T5 tokens per prompt (the published IF models' text length)
MAX_TOKENS = 77


@dataclasses.dataclass
class IFPipelineOutput(BaseOutput):
    """``images``: PIL images, a ``(B, H, W, 3)`` float array in ``[0, 1]``, or (``output_type="pt"``) the raw
    ``(B, 3, H, W)`` samples in ``[-1, 1]``; the two flag lists are ``None`` without a safety checker."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_detected: list[bool] | None
    watermark_detected: list[bool] | None


def _as_list(image: Any) -> list[Any]:
    return list(image) if isinstance(image, (list, tuple)) else [image]


def _stack_arrays(images: list[Any]) -> torch.Tensor:
    """Arrays ``(H, W, C)`` / ``(B, H, W, C)`` or tensors ``(C, H, W)`` / ``(B, C, H, W)`` as one NCHW batch."""
    if isinstance(images[0], np.ndarray):
        array = np.concatenate(images) if images[0].ndim == 4 else np.stack(images)
        if array.ndim == 3:  # (B, H, W): one channel
            array = array[..., None]
        return torch.from_numpy(array.transpose(0, 3, 1, 2))
    return torch.cat(images) if images[0].ndim == 4 else torch.stack(images)


def pixels_as_given(image: Any) -> torch.Tensor:
    """The lower stage's image as a ``(B, 3, H, W)`` float batch: PIL images mapped to ``[-1, 1]``, arrays and
    tensors taken as they are (stage I's ``output_type="pt"`` output is already in ``[-1, 1]``)."""
    images = _as_list(image)
    if isinstance(images[0], PIL.Image.Image):
        arrays = [np.asarray(i.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for i in images]
        return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2))
    return _stack_arrays(images)


def resize_short_side(image: PIL.Image.Image, side: int) -> PIL.Image.Image:
    """``image`` resized (bicubic) so its short side is ``side`` pixels and its long side a multiple of 8."""
    w, h = image.size
    ratio = w / h
    if ratio >= 1:
        w, h = int(round(side / 8 * ratio) * 8), side
    else:
        w, h = side, int(round(side / 8 / ratio) * 8)
    return image.resize((w, h), resample=PIL.Image.Resampling.BICUBIC, reducing_gap=None)


def pixels_resized(image: Any, side: int) -> torch.Tensor:
    """The image to start from as a ``(B, C, H, W)`` float batch: PIL images resized to a short side of ``side``
    pixels (:func:`resize_short_side`) and mapped to ``[-1, 1]``; arrays and tensors taken as they are."""
    images = _as_list(image)
    if isinstance(images[0], PIL.Image.Image):
        arrays = [np.asarray(resize_short_side(i.convert("RGB"), side), dtype=np.float32) / 127.5 - 1.0 for i in images]
        return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2))
    return _stack_arrays(images)


class IFBase(StableDiffusionBase):
    """Shared steps of the IF pipelines (not registered; the six concrete pipelines are).

    Components: ``tokenizer`` (``T5Tokenizer``), ``text_encoder`` (``T5EncoderModel``), ``unet``
    (``UNet2DConditionModel`` with learned variance), ``scheduler`` (``DDPMScheduler``), and the optional
    ``safety_checker`` (:class:`~difflux_deepfloyd_if.IFSafetyChecker`), ``feature_extractor``
    (``CLIPImageProcessor``) and ``watermarker`` (:class:`~difflux_deepfloyd_if.IFWatermarker`).
    """

    model_cpu_offload_seq = "text_encoder->unet"
    _exclude_from_cpu_offload = ("watermarker",)
    _optional_components = ("tokenizer", "text_encoder", "safety_checker", "feature_extractor", "watermarker")
    _callback_tensor_inputs: tuple[str, ...] = ("latents", "prompt_embeds", "negative_prompt_embeds")

    watermarker: Any

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: Any,
        unet: Any,
        scheduler: Any,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        watermarker: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__()
        self.warn_about_safety_checker(safety_checker, feature_extractor, requires_safety_checker)
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            watermarker=watermarker,
        )
        self.register_to_config(requires_safety_checker=requires_safety_checker)

    @property
    def vae_scale_factor(self) -> int:
        """1: IF samples pixels (there is no VAE)."""
        return 1

    def uses_guidance(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    def default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return height or h, width or w

    # -- prompts ---------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: Prompt | None,
        do_classifier_free_guidance: bool = True,
        num_images_per_prompt: int = 1,
        device: torch.device | None = None,
        negative_prompt: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        clean_caption: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(prompt_embeds, negative_prompt_embeds)``, each ``(B * num_images_per_prompt, 77, width)`` in the text
        encoder's dtype; the negative is ``None`` without guidance and the encoded ``""`` without a negative prompt.

        Captions are cleaned (``clean_caption``, :mod:`difflux_pixart.captions`: needs ``beautifulsoup4`` and
        ``ftfy``, a warning and lower-casing otherwise), padded or cut to 77 T5 tokens and encoded.
        """
        if self.text_encoder is not None:
            dtype = self.text_encoder.dtype
        elif self.unet is not None:
            dtype = self.unet.dtype
        else:
            dtype = None
        ones = None if prompt_embeds is None else torch.ones(prompt_embeds.shape[:2], dtype=torch.long)
        neg_ones = None if negative_prompt_embeds is None else torch.ones(negative_prompt_embeds.shape[:2])
        if prompt_embeds is None and (self.text_encoder is None or self.tokenizer is None):
            raise ValueError(f"{type(self).__name__} has no text_encoder / tokenizer; pass prompt_embeds")
        encoded = encode_prompt_t5(
            self.text_encoder,
            self.tokenizer,
            prompt,
            device=device or self.device,
            dtype=dtype,
            guidance=do_classifier_free_guidance,
            negative_prompt=negative_prompt,
            num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds,
            prompt_attention_mask=ones,
            negative_prompt_embeds=negative_prompt_embeds,
            negative_prompt_attention_mask=neg_ones,
            clean_caption=clean_caption,
            max_sequence_length=MAX_TOKENS,
            pipeline=type(self).__name__,
        )
        return encoded.embeds, encoded.negative

    def call_run(self, call: Mapping[str, Any]) -> tuple[Denoise, torch.Tensor | None]:
        """The loop of a pipeline call from its arguments (``locals()``): the run options (:meth:`sampling`), the
        schedule (cut to ``strength`` where the call has one) and the prompt conditioning (:meth:`prompt_run`)."""
        legacy = call["callback"]
        opts = self.sampling(
            call["guidance_scale"],
            eta=call["eta"],
            generator=call["generator"],
            cross_attention_kwargs=call["cross_attention_kwargs"],
            callback=call["callback_on_step_end"],
            callback_names=call["callback_on_step_end_tensor_inputs"],
            legacy=legacy,
            legacy_steps=call["callback_steps"] if legacy is not None else None,
        )
        steps = self.schedule(call["num_inference_steps"], call["timesteps"], strength=call.get("strength"))
        return self.prompt_run(
            opts,
            steps,
            call["prompt"],
            call["negative_prompt"],
            call["num_images_per_prompt"],
            call["prompt_embeds"],
            call["negative_prompt_embeds"],
            call["clean_caption"],
        )

    def prompt_run(
        self,
        opts: Any,
        steps: torch.Tensor,
        prompt: Prompt | None,
        negative_prompt: Prompt | None,
        num_images_per_prompt: int,
        prompt_embeds: torch.Tensor | None,
        negative_prompt_embeds: torch.Tensor | None,
        clean_caption: bool,
    ) -> tuple[Denoise, torch.Tensor | None]:
        """The loop's conditioning from the prompts: ``([negative, positive] embeddings when guiding, negative)``."""
        embeds, negative = self.encode_prompt(
            prompt,
            opts.guidance,
            num_images_per_prompt,
            self.device,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            clean_caption,
        )
        if negative is not None:
            embeds = torch.cat([negative, embeds])
        return Denoise(steps, embeds, opts), negative

    # -- output ----------------------------------------------------------------------------

    def decode(self, latents: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """The samples are the images (``[-1, 1]``): nothing to decode."""
        return latents

    def output(self, latents: torch.Tensor, output_type: str, return_dict: bool, generator: Generator = None) -> Any:
        """IF's output: ``"pt"`` the raw samples; ``"np"`` / ``"pil"`` in ``[0, 1]`` after the safety checker,
        PIL images stamped by the watermarker when there is one."""
        nsfw = watermark = None
        if output_type in ("pt", "latent"):
            images: Any = latents
        else:
            if output_type not in ("pil", "np"):
                raise ValueError(f"{type(self).__name__}: output_type={output_type!r}; choose 'pil', 'np' or 'pt'")
            images = pt_to_numpy((latents / 2 + 0.5).clamp(0, 1).float())
            checker = getattr(self, "safety_checker", None)
            if checker is not None:
                features = self.feature_extractor(numpy_to_pil(images), return_tensors="pt").pixel_values
                images, nsfw, watermark = checker(
                    images=images, clip_input=features.to(device=self.device, dtype=latents.dtype)
                )
            if output_type == "pil":
                images = numpy_to_pil(images)
                if getattr(self, "watermarker", None) is not None:
                    self.watermarker.apply_watermark(images, self.unet.config.sample_size)
        if not return_dict:
            return images, nsfw, watermark
        return IFPipelineOutput(images=images, nsfw_detected=nsfw, watermark_detected=watermark)

    def check_clean_caption(self, clean_caption: Any) -> None:
        if not isinstance(clean_caption, bool):
            raise TypeError(f"{type(self).__name__}: clean_caption must be True or False, got {clean_caption!r}")


def binary_mask(mask_image: Any, side: int) -> torch.Tensor:
    """The repaint mask as a ``(B, 1, H, W)`` float batch of 0 (keep) and 1 (repaint), thresholded at 0.5:
    PIL masks converted to grey, resized to a short side of ``side`` pixels (:func:`resize_short_side`) and
    scaled to ``[0, 1]``; arrays ``(H, W)`` and tensors ``(H, W)`` / ``(1, H, W)`` / ``(B, H, W)`` /
    ``(B, 1, H, W)`` taken in ``[0, 1]``."""
    masks = _as_list(mask_image)
    if isinstance(masks[0], PIL.Image.Image):
        arrays = [np.asarray(resize_short_side(m.convert("L"), side), dtype=np.float32) / 255.0 for m in masks]
        mask = torch.from_numpy(np.stack(arrays)[:, None])
    elif isinstance(masks[0], np.ndarray):
        mask = torch.from_numpy(np.concatenate([m[None, None] for m in masks]).astype(np.float32))
    else:
        mask = torch.cat(masks) if masks[0].ndim == 4 else torch.stack(masks)
        if mask.ndim == 2:
            mask = mask[None, None]
        elif mask.ndim == 3:
            mask = mask[None] if mask.shape[0] == 1 else mask[:, None]
    return (mask >= 0.5).to(torch.float32)


class ImageStart(IFBase):
    """Image-to-image and inpainting starts: the given image, noised to the first timestep of the cut schedule."""

    def noised_start(
        self,
        image: torch.Tensor,
        steps: torch.Tensor,
        total: int,
        per_prompt: int,
        dtype: torch.dtype,
        generator: Generator,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``image`` ``(B, C, H, W)`` in ``[-1, 1]`` repeated per image and noised to ``steps[0]`` (fresh noise
        from ``generator``); where ``mask`` is 0 the image stays clean. Returns ``(total, C, H, W)``."""
        image = image.to(self.device, dtype)
        noise = randn_tensor((total, *image.shape[1:]), generator=generator, device=self.device, dtype=dtype)
        image = spread(image.repeat_interleave(per_prompt, 0), total)
        noised: torch.Tensor = self.scheduler.add_noise(image, noise, steps[:1].repeat(total))
        return noised if mask is None else (1 - mask) * image + mask * noised

    def repaint_only(self, run: Denoise, mask: torch.Tensor) -> None:
        """Keep each step's result only where ``mask`` (``(total, 1, H, W)``) is 1: elsewhere the samples stay
        what they were before the step."""
        before: dict[str, torch.Tensor] = {}

        def remember(i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
            before["latents"] = latents
            return latents

        def blend(i: int, latents: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            return (1 - keep) * before["latents"] + keep * latents

        run.extra["mask"] = mask
        run.before, run.blend = remember, blend

    def masks_for(self, mask: torch.Tensor, total: int, per_prompt: int, dtype: torch.dtype) -> torch.Tensor:
        """The :func:`binary_mask` batch ``(1 or B, 1, H, W)`` as one mask per output ``(total, 1, H, W)``."""
        mask = mask.to(self.device, dtype)
        if mask.shape[0] == 1:
            return mask.repeat_interleave(total, 0)
        return spread(mask.repeat_interleave(per_prompt, 0), total, "masks")

    def start_from_image(
        self,
        call: dict[str, Any],
        start_image: Any,
        mask_image: Any = None,
        low_res: Any = None,
    ) -> Any:
        """The run of an image-to-image or inpainting pipeline, from its call's arguments (``locals()``).

        ``start_image``: what is noised (resized to the UNet's sample size); ``mask_image``: where to repaint
        (inpainting); ``low_res``: the lower stage's image (super-resolution stages, see
        :class:`~difflux_deepfloyd_if.pipeline_if.SuperResolution`).
        """
        name = type(self).__name__
        self.check_clean_caption(call["clean_caption"])
        for label, value in (("image", start_image), ("mask_image", mask_image), ("low-res image", low_res)):
            if value is not None:
                check_finite(value, label, name)
        if low_res is not None:
            self.check_noise_level(call["noise_level"])  # type: ignore[attr-defined]
        inputs = Inputs.of(call, image=start_image, mask_image=mask_image, needs_image=True)
        inputs.needs_mask = "mask_image" in call
        batch = self.check_inputs(inputs, image_minimum=1)
        per_prompt = call["num_images_per_prompt"]
        total = batch * per_prompt
        start = pixels_resized(start_image, self.unet.config.sample_size)
        if start.shape[0] not in (1, batch):
            raise ValueError(f"{name}: {start.shape[0]} images for {batch} prompts; pass one, or one per prompt")
        side = self.unet.config.sample_size
        mask = None if mask_image is None else binary_mask(mask_image, side)
        if mask is not None and mask.shape[-2:] != start.shape[-2:]:
            raise ValueError(
                f"{name}: mask_image is {tuple(mask.shape[-2:])} but image {tuple(start.shape[-2:])} (after resizing "
                "PIL inputs to the UNet's sample size); pass a mask the size of the image"
            )
        if mask is not None and mask.shape[0] not in (1, batch):
            raise ValueError(f"{name}: {mask.shape[0]} masks for {batch} prompts; pass one, or one per prompt")
        generator = call["generator"]
        run, negative = self.call_run(call)
        steps = run.timesteps
        dtype = run.embeds.dtype
        if mask is not None:
            mask = self.masks_for(mask, total, per_prompt, dtype)
        latents = self.noised_start(start, steps, total, per_prompt, dtype, generator, mask)
        if low_res is not None:
            pixels = pixels_as_given(low_res).to(self.device, self.unet.dtype).repeat_interleave(per_prompt, 0)
            pixels = spread(pixels, total)
            height, width = start.shape[-2:]
            self.condition(run, pixels, call["noise_level"], height, width, generator)  # type: ignore[attr-defined]
        if mask is not None:
            self.repaint_only(run, mask)
        return self.output(self.denoise(latents, run, negative), call["output_type"], call["return_dict"], generator)
