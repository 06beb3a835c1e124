"""What the Kandinsky 2.2 decoder pipelines share: image-embedding conditioning, MoVQ latents, checks.

The decoder is a UNet conditioned on a CLIP image embedding (``addition_embed_type="image"`` or
``"image_hint"``, ``encoder_hid_dim_type="image_proj"``) that predicts noise and variance, and a
MoVQ decoder (a ``VQModel`` with spatially conditioned normalisation). The denoising loop is the
Stable Diffusion base's: the image embedding takes the place of the prompt embeddings and reaches
the UNet through ``added_cond_kwargs``; a learned-variance prediction is guided on its noise half.

Source: Razzhigaev et al., *Kandinsky: an Improved Text-to-Image Synthesis with Image Prior and
Latent Diffusion* (2023, arXiv:2310.03502).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import torch
from difflux.pipeline_utils import (
    check_batch,
    check_callback_inputs,
    check_finite,
    check_output_type,
    check_steps,
)
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Denoise, ImagesOnly, Sampling, StableDiffusionBase, spread
from difflux_stable_diffusion.images import ImageInput, is_image_input, preprocess_image, preprocess_mask

__all__ = ["Begun", "Embeds", "KandinskyV22DecoderBase", "grow_repaint_region", "latent_size"]

Embeds = torch.Tensor | Sequence[torch.Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | None


def latent_size(pixels: int, scale_factor: int) -> int:
    """Latent pixels for ``pixels`` image pixels: ``ceil(pixels / scale_factor**2) * scale_factor``.

    Kandinsky rounds the image size up to a multiple of ``scale_factor**2`` (64 for the published MoVQ)
    before dividing by ``scale_factor``, so a 500-pixel request gives a 512-pixel image.
    """
    return -(-pixels // scale_factor**2) * scale_factor


class Begun(NamedTuple):
    """A checked run: the image count, the loop options, the embeddings the UNet sees and their negative half."""

    total: int
    opts: Sampling
    embeds: torch.Tensor
    negative: torch.Tensor | None
    batch: int  # image embeddings given


def _as_batch(value: Embeds | None, name: str, pipeline: str) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value or not all(isinstance(v, torch.Tensor) for v in value):
            raise TypeError(f"{pipeline}: {name} must be a tensor or a non-empty list of tensors")
        value = torch.cat(list(value), dim=0)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{pipeline}: {name} must be a torch.Tensor (batch, features), got {type(value).__name__}")
    return value


class KandinskyV22DecoderBase(ImagesOnly, StableDiffusionBase):
    """Shared steps of the Kandinsky 2.2 decoder pipelines (not registered; the concrete pipelines are).

    Components: ``unet`` (``UNet2DConditionModel``), ``scheduler`` (``DDPMScheduler`` as published;
    any scheduler works), ``movq`` (``VQModel``).
    """

    model_cpu_offload_seq = "unet->movq"
    _optional_components: ClassVar[tuple[str, ...]] = ()
    _callback_tensor_inputs: tuple[str, ...] = ("latents", "image_embeds", "negative_image_embeds")
    _embeds_names: ClassVar[tuple[str, str]] = ("image_embeds", "negative_image_embeds")

    movq: Any

    def __init__(self, unet: Any, scheduler: Scheduler, movq: Any) -> None:
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, movq=movq)

    @property
    def vae(self) -> Any:
        """The MoVQ model: what the Stable Diffusion steps call the VAE."""
        return self.__dict__.get("movq")

    @property
    def movq_scale_factor(self) -> int:
        """How many image pixels one latent pixel spans (8 for the published MoVQ)."""
        return int(2 ** (len(self.movq.config.block_out_channels) - 1))

    @property
    def vae_scale_factor(self) -> int:
        return self.movq_scale_factor

    def uses_guidance(self, guidance_scale: float) -> bool:
        return guidance_scale > 1.0

    # -- checks ----------------------------------------------------------------------------

    def check_embeds(
        self, image_embeds: Embeds, negative_image_embeds: Embeds | None, guidance_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``image_embeds`` and ``negative_image_embeds`` as ``(B, D)`` tensors, ``D`` the UNet's ``encoder_hid_dim``.

        :raises TypeError | ValueError: for other types, ranks, widths, batch sizes, or NaN.
        """
        name = type(self).__name__
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
            raise TypeError(f"{name}: guidance_scale must be a number, got {guidance_scale!r}")
        positive = _as_batch(image_embeds, "image_embeds", name)
        if positive is None:
            raise ValueError(f"{name}: pass image_embeds (the prior pipeline's image_embeds)")
        negative = _as_batch(negative_image_embeds, "negative_image_embeds", name)
        width = self.image_embeds_width()
        for label, value in (("image_embeds", positive), ("negative_image_embeds", negative)):
            if value is None:
                continue
            if value.ndim != 2:
                raise ValueError(f"{name}: {label} must be shaped (batch, features), got {tuple(value.shape)}")
            if width is not None and value.shape[1] != width:
                raise ValueError(
                    f"{name}: {label} have {value.shape[1]} features, but the UNet reads {width}; "
                    "use the image_embeds of this model's prior"
                )
            check_finite(value, label, name)
        if negative is None and self.uses_guidance(guidance_scale):
            raise ValueError(
                f"{name}: guidance_scale={guidance_scale} guides, so pass negative_image_embeds (the prior's), "
                "or set guidance_scale <= 1"
            )
        if negative is not None and negative.shape[0] not in (1, positive.shape[0]):
            raise ValueError(
                f"{name}: {negative.shape[0]} negative_image_embeds for {positive.shape[0]} image_embeds; pass 1 or "
                f"{positive.shape[0]}"
            )
        return positive, negative

    def image_embeds_width(self) -> int | None:
        """The width of the image embeddings the UNet reads: ``encoder_hid_dim`` for 2.2's ``image_proj``,
        ``cross_attention_dim`` for 2.1's ``text_image_proj``."""
        config = self.unet.config
        key = "encoder_hid_dim" if config.get("encoder_hid_dim_type") == "image_proj" else "cross_attention_dim"
        width = config.get(key)
        return int(width) if isinstance(width, int) else None

    def check_run(
        self,
        batch: int,
        height: Any,
        width: Any,
        num_inference_steps: Any,
        num_images_per_prompt: Any,
        generator: Generator,
        latents: torch.Tensor | None,
        output_type: str,
        callback_names: Sequence[str],
        *,
        strength: Any = None,
    ) -> int:
        """Check the run options before any model runs; returns the number of images.

        :raises TypeError | ValueError: naming the argument.
        """
        name = type(self).__name__
        for label, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"{name}: {label} must be a positive int number of pixels, got {value!r}")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, numbers.Integral):
            raise TypeError(f"{name}: num_images_per_prompt must be an int, got {num_images_per_prompt!r}")
        if num_images_per_prompt < 1:
            raise ValueError(f"{name}: num_images_per_prompt={num_images_per_prompt} must be at least 1")
        check_steps(num_inference_steps, name)
        if strength is not None and (
            isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 <= float(strength) <= 1.0
        ):
            raise ValueError(f"{name}: strength must be a number in [0, 1], got {strength!r}")
        check_output_type(output_type, ("pil", "np", "pt", "latent"), name)
        check_callback_inputs(callback_names, self._callback_tensor_inputs, name)
        total = batch * int(num_images_per_prompt)
        check_batch(total, generator)
        if latents is not None:
            shape = self.latent_shape(total, int(height), int(width))
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"{name}: latents have shape {got}, expected {shape}")
            check_finite(latents, "latents", name)
        return total

    def check_image(self, image: Any, label: str = "image") -> None:
        """An image input (PIL, array, tensor, or a list of them)."""
        if image is None or not is_image_input(image):
            raise TypeError(
                f"{type(self).__name__}: {label} must be a PIL image, array or tensor (or a list of them), "
                f"got {type(image).__name__}"
            )

    def check_images(self, **images: Any) -> None:
        """Each keyword an image input (:meth:`check_image`, all of them first), then free of NaN and infinity.

        :raises TypeError | ValueError: naming the argument.
        """
        for label, image in images.items():
            self.check_image(image, label)
        for label, image in images.items():
            check_finite(image, label, type(self).__name__)

    def begin(self, args: Mapping[str, Any]) -> Begun:
        """Check a decoder call's common arguments (its ``locals()``) and set up the run, before any model runs.

        Checks ``image_embeds`` / ``negative_image_embeds`` / ``guidance_scale`` (:meth:`check_embeds`) and the
        run options (:meth:`check_run`), sets the run state (:meth:`sampling`) and batches the embeddings.
        """
        positive, negative = self.check_embeds(
            args["image_embeds"], args.get("negative_image_embeds"), args["guidance_scale"]
        )
        names = args["callback_on_step_end_tensor_inputs"]
        total = self.check_run(
            positive.shape[0],
            args["height"],
            args["width"],
            args["num_inference_steps"],
            args["num_images_per_prompt"],
            args.get("generator"),
            args.get("latents"),
            args["output_type"],
            names,
            strength=args.get("strength"),
        )
        opts = self.sampling(
            args["guidance_scale"],
            generator=args.get("generator"),
            callback=args.get("callback_on_step_end"),
            callback_names=names,
            legacy=args.get("callback"),
            legacy_steps=args.get("callback_steps"),
        )
        embeds, negative = self.image_embeds(positive, negative, args["num_images_per_prompt"], opts.guidance)
        return Begun(total, opts, embeds, negative, positive.shape[0])

    # -- conditioning ----------------------------------------------------------------------

    def image_embeds(
        self,
        positive: torch.Tensor,
        negative: torch.Tensor | None,
        num_images_per_prompt: int,
        guidance: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(embeds the UNet sees, negative half)``: each embedding repeated per image, ``[negative, positive]``
        when guiding."""
        dtype = self.unet.dtype
        positive = positive.repeat_interleave(num_images_per_prompt, dim=0).to(self.device, dtype)
        if not guidance or negative is None:
            return positive, None
        negative = spread(negative.to(self.device, dtype), positive.shape[0] // num_images_per_prompt, "embeddings")
        negative = negative.repeat_interleave(num_images_per_prompt, dim=0)
        return torch.cat([negative, positive]), negative

    def latent_shape(self, total: int, height: int, width: int, channels: int | None = None) -> tuple[int, ...]:
        channels = self.movq.config.latent_channels if channels is None else channels  # a hint UNet takes more
        factor = self.movq_scale_factor
        return (total, channels, latent_size(height, factor), latent_size(width, factor))

    def pixels(self, image: ImageInput, height: int, width: int) -> torch.Tensor:
        """``image`` resized to ``height`` x ``width`` (bicubic, as Kandinsky's processor) in ``[-1, 1]``."""
        return preprocess_image(
            image,
            height,
            width,
            multiple=1,
            latent_channels=self.movq.config.latent_channels,
            resample="bicubic",
            reducing_gap=1,
        )

    def encode_vae(self, pixels: torch.Tensor, generator: Generator, *, stats: bool = False) -> torch.Tensor:
        """MoVQ latents of ``pixels`` (``[-1, 1]``), unscaled (Kandinsky uses no latent scaling)."""
        latents: torch.Tensor = self.movq.encode(pixels.to(self.movq.dtype), return_dict=False)[0]
        return latents.to(pixels.dtype)

    def decode(self, latents: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """Latents ``(B, C, h, w)`` to images ``(B, 3, h * f, w * f)`` in ``[-1, 1]`` (no quantisation)."""
        image: torch.Tensor = self.movq.decode(latents.to(self.movq.dtype), force_not_quantize=True, return_dict=False)[
            0
        ]
        return image

    def movq_latents(
        self,
        image: ImageInput | None,
        height: int,
        width: int,
        total: int,
        per_image: int,
        dtype: torch.dtype,
        generator: Generator,
    ) -> torch.Tensor:
        """MoVQ latents of ``image`` (one per output: each image repeated ``per_image`` times), not noised."""
        if image is None:
            raise ValueError(f"{type(self).__name__}: pass image (the image to start from)")
        return self.latents_of(self.pixels(image, height, width), total, per_image, dtype, generator)

    def inpaint_inputs(
        self,
        image: ImageInput | None,
        mask_image: ImageInput | None,
        height: int,
        width: int,
        total: int,
        per_image: int,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(MoVQ latents of image, keep-mask)`` for inpainting, ``(total, C, h, w)`` and ``(total, 1, h, w)``.

        The keep-mask is 1 where ``mask_image`` is black (< 0.5) and 0 where it is repainted, resized to the
        latents (nearest) with the repainted region grown by one latent pixel (:func:`grow_repaint_region`).
        MoVQ encoding draws no noise, so no generator is taken.

        :raises ValueError: without ``image`` or ``mask_image``.
        """
        if mask_image is None:
            raise ValueError(f"{type(self).__name__}: pass mask_image (white where to repaint)")
        known = self.movq_latents(image, height, width, total, per_image, dtype, None)
        repaint = preprocess_mask(mask_image, height, width, multiple=1).to(self.device, dtype)
        keep = torch.nn.functional.interpolate(1 - repaint, size=tuple(known.shape[-2:]), mode="nearest")
        return known, spread(grow_repaint_region(keep).repeat_interleave(per_image, dim=0), total, "masks")

    def inpaint_channels(self, run: Denoise, known: torch.Tensor, keep: torch.Tensor) -> None:
        """Give the 9-channel inpainting UNet the masked image's latents ``known * keep`` and the keep-mask as
        extra input channels (``masked_image``, ``mask_image``; doubled when guiding)."""
        doubled = 2 if run.sampling.guidance else 1
        run.extra.update(masked_image=(known * keep).repeat(doubled, 1, 1, 1), mask_image=keep.repeat(doubled, 1, 1, 1))
        run.channels = ("masked_image", "mask_image")

    def latents_of(
        self, pixels: torch.Tensor, total: int, per_image: int, dtype: torch.dtype, generator: Generator
    ) -> torch.Tensor:
        """MoVQ latents of preprocessed ``pixels`` ``(B, 3, H, W)`` in ``[-1, 1]`` (latents pass through), each
        repeated ``per_image`` times and spread to ``total``."""
        pixels = pixels.to(self.device, dtype)
        latents = pixels if pixels.shape[1] == self.movq.config.latent_channels else self.encode_vae(pixels, generator)
        return spread(latents.repeat_interleave(per_image, dim=0), total)


def grow_repaint_region(keep: torch.Tensor) -> torch.Tensor:
    """Kandinsky's mask erosion at latent size: every latent pixel next to one being repainted is repainted too.

    ``keep``: ``(B, 1, h, w)`` with 1 where the image is kept and 0 where it is repainted. A kept pixel
    turns 0 when a repainted pixel lies below, right, below-right, above, left or above-left of it
    (the neighbourhood of the published pipeline, which leaves out the two anti-diagonals).
    """
    repaint = keep != 1
    grown = repaint.clone()
    h, w = keep.shape[-2:]
    # a repainted pixel at (i + di, j + dj) zeroes the kept pixel at (i, j)
    for di, dj in ((1, 0), (0, 1), (1, 1), (-1, 0), (0, -1), (-1, -1)):
        src_i, dst_i = (slice(di, h), slice(0, h - di)) if di >= 0 else (slice(0, h + di), slice(-di, h))
        src_j, dst_j = (slice(dj, w), slice(0, w - dj)) if dj >= 0 else (slice(0, w + dj), slice(-dj, w))
        grown[..., dst_i, dst_j] |= repaint[..., src_i, src_j]
    return torch.where(grown, torch.zeros_like(keep), keep)
