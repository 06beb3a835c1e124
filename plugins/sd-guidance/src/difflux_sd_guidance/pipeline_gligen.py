"""GLIGEN (Li, Liu, Wu, Mu, Yang, Gao, Li and Lee, *GLIGEN: Open-Set Grounded Text-to-Image
Generation*, CVPR 2023, arXiv:2301.07093) on the SD base: boxes with a phrase (and, text-image, a
reference image) become grounding tokens that the UNet's gated self-attention layers read.

The UNet is a ``UNet2DConditionModel`` built with ``attention_type="gated"`` (text boxes) or
``"gated-text-image"``; its position net turns the boxes and their CLIP features into tokens
(``cross_attention_kwargs["gligen"]``). With ``gligen_inpaint_image`` the region outside the boxes
is kept from that image (the published inpainting checkpoints also see it as extra UNet channels).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import PIL.Image
import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler
from difflux_models.layers.attention import GatedSelfAttentionDense
from difflux_stable_diffusion._base import Denoise
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.images import preprocess_image
from difflux_stable_diffusion.prompts import Prompt

from ._sd import GuidedStableDiffusion

__all__ = ["StableDiffusionGLIGENPipeline", "StableDiffusionGLIGENTextImagePipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None

#: at most this many boxes are grounded (the position net's token budget, as in the paper's code)
MAX_OBJS = 30


class _GLIGEN(GuidedStableDiffusion):
    """What both GLIGEN pipelines share: checks, the fuser switch, inpainting with boxes."""

    _attention_types: ClassVar[tuple[str, ...]] = ("gated",)

    def enable_fuser(self, enabled: bool = True) -> None:
        """Switch every gated self-attention layer of the UNet on or off."""
        for module in self.unet.modules():
            if isinstance(module, GatedSelfAttentionDense):
                module.enabled = enabled

    def check_gligen(self, boxes: Any, phrases: Any, beta: Any, inpaint_image: Any) -> list[list[float]]:
        """The boxes as lists of four floats, after checking the grounding inputs."""
        name = type(self).__name__
        kind = self.unet.config.get("attention_type", "default")
        if kind not in self._attention_types:
            raise ValueError(
                f"{name}: the UNet has attention_type={kind!r}; GLIGEN needs a UNet built with "
                f"attention_type={self._attention_types[0]!r} (its gated self-attention and position net)"
            )
        if boxes is None or not isinstance(boxes, Sequence) or isinstance(boxes, str):
            raise ValueError(f"{name}: pass gligen_boxes, a list of [x0, y0, x1, y1] boxes in [0, 1]")
        out = []
        for box in boxes:
            if (
                not isinstance(box, Sequence)
                or len(box) != 4
                or not all(isinstance(v, numbers.Real) and 0 <= float(v) <= 1 for v in box)
            ):
                raise ValueError(f"{name}: every gligen_box is [x0, y0, x1, y1] with values in [0, 1], got {box!r}")
            out.append([float(v) for v in box])
        if phrases is not None:
            if not isinstance(phrases, Sequence) or isinstance(phrases, str):
                raise TypeError(f"{name}: gligen_phrases must be a list of strings, one per box")
            if len(phrases) != len(out):
                raise ValueError(
                    f"{name}: {len(phrases)} gligen_phrases for {len(out)} gligen_boxes; pass one phrase per box"
                )
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 <= float(beta) <= 1:
            raise ValueError(f"{name}: gligen_scheduled_sampling_beta must be in [0, 1], got {beta!r}")
        if inpaint_image is not None:
            if not isinstance(inpaint_image, PIL.Image.Image):
                raise TypeError(f"{name}: gligen_inpaint_image must be a PIL image, got {type(inpaint_image).__name__}")
            channels = 2 * int(self.vae.config.latent_channels) + 1
            if self.unet.config.in_channels != channels:
                raise ValueError(
                    f"{name}: gligen_inpaint_image needs a GLIGEN inpainting UNet ({channels} input channels: "
                    f"latents, masked image latents, mask); this one takes {self.unet.config.in_channels}"
                )
        return out

    def pooled_text(self, phrases: list[str]) -> torch.Tensor:
        """The text encoder's pooled output ``(n, hidden)`` of each phrase (padded to the longest)."""
        ids = self.tokenizer(phrases, padding=True, return_tensors="pt").to(self.device)
        return torch.as_tensor(self.text_encoder(**ids).pooler_output)

    def inpaint_with_boxes(self, run: Denoise, image: PIL.Image.Image, boxes: list[list[float]], batch: int) -> None:
        """Keep ``image`` outside the boxes: its latents, noised to each step, replace the latents there
        before the step, and ``[latents * mask, mask]`` is concatenated to the UNet input."""
        size = int(self.vae.config.sample_size)
        if image.size != (size, size):
            side = min(image.size)
            w, h = image.size
            image = image.crop(((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2))
            image = image.resize((size, size), PIL.Image.Resampling.LANCZOS)
        pixels = preprocess_image(image, multiple=self.vae_scale_factor).to(device=self.device, dtype=self.vae.dtype)
        known = self.encode_vae(pixels, None)
        h, w = known.shape[2:]
        keep = torch.ones(h, w)
        for x0, y0, x1, y1 in boxes:
            keep[int(y0 * w) : int(y1 * w), int(x0 * h) : int(x1 * h)] = 0
        keep = keep.to(known)[None, None]
        run.extra["gligen_inpaint"] = torch.cat([known * keep, keep], dim=1).expand(batch, -1, -1, -1).clone()
        run.channels = ("gligen_inpaint",)
        previous = run.before

        def before(i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
            if previous is not None:
                latents = previous(i, t, latents)
            noised: torch.Tensor = self.scheduler.add_noise(known, torch.randn_like(known), torch.tensor([t]))
            return noised.expand(latents.shape[0], -1, -1, -1) * keep + latents * (1 - keep)

        run.before = before

    def first_channels(self, run: Denoise) -> None:
        """An inpainting UNet (more than 4 input channels) starts from fresh 4-channel noise, as Diffusers does."""
        previous = run.before

        def before(i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
            if latents.shape[1] != 4:
                latents = torch.randn_like(latents[:, :4])
            return latents if previous is None else previous(i, t, latents)

        run.before = before


class StableDiffusionGLIGENPipeline(_GLIGEN):
    """Text-to-image (and box inpainting) with Stable Diffusion grounded by phrases in boxes."""

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        gligen_scheduled_sampling_beta: float = 0.3,
        gligen_phrases: Sequence[str] | None = None,
        gligen_boxes: Sequence[Sequence[float]] | None = None,
        gligen_inpaint_image: PIL.Image.Image | None = None,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt`` with each phrase of ``gligen_phrases`` inside its box.

        :param gligen_phrases: one phrase per box (what goes there).
        :param gligen_boxes: ``[x0, y0, x1, y1]`` per phrase, fractions of the width and height in ``[0, 1]``;
            at most 30 are used (a ``FutureWarning`` says so).
        :param gligen_inpaint_image: a PIL image to keep outside the boxes (center-cropped and resized to
            the VAE's ``sample_size``); the inside is generated.
        :param gligen_scheduled_sampling_beta: the fraction of the steps that use the grounding layers
            (scheduled sampling, sec. 4.2; default 0.3).

        The other arguments are :class:`~difflux_stable_diffusion.StableDiffusionPipeline`'s.

        :raises TypeError | ValueError: for bad input (boxes not in ``[0, 1]``, phrases not one per box, a UNet
            without GLIGEN layers ...), before any model runs.
        """
        batch = self.check_inputs(Inputs.of(locals()))
        if gligen_phrases is None:
            raise ValueError(f"{type(self).__name__}: pass gligen_phrases, one phrase per box")
        boxes = self.check_gligen(gligen_boxes, gligen_phrases, gligen_scheduled_sampling_beta, gligen_inpaint_image)
        phrases = list(gligen_phrases)
        if len(boxes) > MAX_OBJS:
            warnings.warn(
                f"more than {MAX_OBJS} GLIGEN boxes; only the first {MAX_OBJS} are used", FutureWarning, stacklevel=2
            )
            boxes, phrases = boxes[:MAX_OBJS], phrases[:MAX_OBJS]
        height, width = self.default_size(height, width)
        total = batch * num_images_per_prompt
        kwargs = dict(cross_attention_kwargs or {})
        opts = self.sampling_of(locals(), cross_attention_kwargs=kwargs)
        embeds = self.prompt_of(locals(), opts)
        steps = self.schedule(num_inference_steps)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        kwargs["gligen"] = self.grounding(phrases, boxes, total, opts.guidance)
        run = self.run(steps, embeds, opts, total)
        grounded_steps = int(gligen_scheduled_sampling_beta * len(steps))

        def schedule_grounding(i: int, t: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
            if i == grounded_steps:  # scheduled sampling: the rest of the run without the grounding layers
                self.enable_fuser(False)
            return current

        run.before = schedule_grounding
        self.first_channels(run)
        if gligen_inpaint_image is not None:
            self.inpaint_with_boxes(run, gligen_inpaint_image, boxes, total * (2 if opts.guidance else 1))
        self.enable_fuser(True)
        try:
            latents = self.denoise(latents, run, embeds.negative)
        finally:
            self.enable_fuser(True)
        return self.output(latents, output_type, return_dict, generator)

    def grounding(self, phrases: list[str], boxes: list[list[float]], total: int, guidance: bool) -> dict[str, Any]:
        """The position net's inputs: boxes ``(B, 30, 4)``, phrase embeddings ``(B, 30, cross_attention_dim)``
        and masks ``(B, 30)`` (1 for a real box; 0 everywhere in the unconditional half when guiding)."""
        dtype, n = self.text_encoder.dtype, len(boxes)
        box = torch.zeros(MAX_OBJS, 4, device=self.device, dtype=dtype)
        text = torch.zeros(MAX_OBJS, self.unet.config.cross_attention_dim, device=self.device, dtype=dtype)
        mask = torch.zeros(MAX_OBJS, device=self.device, dtype=dtype)
        if n:
            box[:n] = torch.tensor(boxes, dtype=dtype)
            text[:n] = self.pooled_text(phrases)
            mask[:n] = 1
        box, text, mask = box.expand(total, -1, -1), text.expand(total, -1, -1), mask.expand(total, -1)
        if guidance:
            box, text = torch.cat([box, box]), torch.cat([text, text])
            mask = torch.cat([torch.zeros_like(mask), mask])
        return {"boxes": box.clone(), "positive_embeddings": text.clone(), "masks": mask.clone()}


class StableDiffusionGLIGENTextImagePipeline(_GLIGEN):
    """Text-to-image with Stable Diffusion grounded by phrases and/or reference images in boxes."""

    _attention_types = ("gated-text-image",)
    _optional_components = ("safety_checker", "feature_extractor")
    processor: Any
    image_project: Any

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        processor: Any,
        image_encoder: Any,
        image_project: Any,
        unet: Any,
        scheduler: Scheduler,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__(
            vae,
            text_encoder,
            tokenizer,
            unet,
            scheduler,
            safety_checker,
            feature_extractor,
            None,
            requires_safety_checker,
        )
        self.register_modules(processor=processor, image_encoder=image_encoder, image_project=image_project)

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        gligen_scheduled_sampling_beta: float = 0.3,
        gligen_phrases: Sequence[str | None] | None = None,
        gligen_images: Sequence[PIL.Image.Image | None] | None = None,
        input_phrases_mask: int | Sequence[int] | None = None,
        input_images_mask: int | Sequence[int] | None = None,
        gligen_boxes: Sequence[Sequence[float]] | None = None,
        gligen_inpaint_image: PIL.Image.Image | None = None,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        gligen_normalize_constant: float = 28.7,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt`` with each box holding its phrase and/or reference image.

        :param gligen_phrases: one phrase (or ``None``) per box.
        :param gligen_images: one PIL image (or ``None``) per box; encoded by ``image_encoder``,
            projected by ``image_project`` and scaled to norm ``gligen_normalize_constant`` (28.7).
        :param input_phrases_mask: / :param input_images_mask: 0 or 1 for all boxes, or per box: which
            phrases / images count.
        :param gligen_boxes: ``[x0, y0, x1, y1]`` per box in ``[0, 1]``; at most 30.
        :param gligen_scheduled_sampling_beta: accepted as in Diffusers, where this pipeline keeps the
            grounding layers on for every step.

        Each step runs the UNet with and without grounding; guidance combines the grounded conditional
        prediction with the ungrounded unconditional one. The other arguments are
        :class:`StableDiffusionGLIGENPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        batch = self.check_inputs(Inputs.of(locals()))
        name = type(self).__name__
        if gligen_phrases is None and gligen_images is None:
            raise ValueError(f"{name}: pass gligen_phrases and/or gligen_images, one per box")
        count = len(gligen_phrases if gligen_phrases is not None else gligen_images or [])
        if gligen_images is not None and gligen_phrases is not None and len(gligen_images) != len(gligen_phrases):
            raise ValueError(f"{name}: {len(gligen_images)} gligen_images for {len(gligen_phrases)} gligen_phrases")
        boxes = self.check_gligen(gligen_boxes, [None] * count, gligen_scheduled_sampling_beta, gligen_inpaint_image)
        phrases: list[str | None] = list(gligen_phrases) if gligen_phrases is not None else [None] * count
        images: list[PIL.Image.Image | None] = list(gligen_images) if gligen_images is not None else [None] * count
        if len(boxes) > MAX_OBJS:
            warnings.warn(
                f"more than {MAX_OBJS} GLIGEN boxes; only the first {MAX_OBJS} are used", FutureWarning, stacklevel=2
            )
            boxes, phrases, images = boxes[:MAX_OBJS], phrases[:MAX_OBJS], images[:MAX_OBJS]
        height, width = self.default_size(height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(locals())
        embeds = self.prompt_of(locals(), opts)
        steps = self.schedule(num_inference_steps)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        repeat = total * (2 if opts.guidance else 1)
        hidden = embeds.embeds.shape[2]
        grounded = self.grounding(
            hidden, phrases, images, boxes, input_phrases_mask, input_images_mask, repeat, gligen_normalize_constant
        )
        plain = self.grounding(hidden, [], [], [], None, None, repeat, gligen_normalize_constant)
        run = self.run(steps, embeds, opts, total)
        base = dict(cross_attention_kwargs or {})

        def predict(i: int, t: torch.Tensor, model_input: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            self._cross_attention_kwargs = {**base, "gligen": grounded}
            with_boxes: torch.Tensor = self.predict_noise(run, t, model_input, text, step=i)
            if model_input.shape[0] == total:
                return with_boxes
            self._cross_attention_kwargs = {**base, "gligen": plain}
            without: torch.Tensor = self.predict_noise(run, t, model_input, text, step=i)
            return torch.cat([without.chunk(2)[0], with_boxes.chunk(2)[1]])

        run.predict = predict
        self.first_channels(run)
        if gligen_inpaint_image is not None:
            self.inpaint_with_boxes(run, gligen_inpaint_image, boxes, repeat)
        self.enable_fuser(True)
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)

    def clip_feature(self, image: PIL.Image.Image, normalize: float) -> torch.Tensor:
        """A reference image's grounding feature ``(1, hidden)``: CLIP image embedding, projected into the
        text space by ``image_project``, scaled to norm ``normalize``."""
        inputs = self.processor(images=[image], return_tensors="pt").to(self.device)
        pixels = inputs["pixel_values"].to(self.image_encoder.dtype)
        feature = torch.as_tensor(self.image_project(self.image_encoder(pixel_values=pixels).image_embeds)).squeeze(0)
        scaled: torch.Tensor = feature / feature.norm() * normalize
        return scaled.unsqueeze(0)

    def grounding(
        self,
        hidden: int,
        phrases: list[str | None],
        images: list[PIL.Image.Image | None],
        boxes: list[list[float]],
        phrases_mask: int | Sequence[int] | None,
        images_mask: int | Sequence[int] | None,
        repeat: int,
        normalize: float,
    ) -> dict[str, torch.Tensor]:
        """The text-image position net's inputs, each with ``repeat`` rows and ``MAX_OBJS`` boxes."""
        dtype, dev = self.text_encoder.dtype, self.device
        box = torch.zeros(MAX_OBJS, 4, device=dev, dtype=dtype)
        masks = torch.zeros(MAX_OBJS, device=dev, dtype=dtype)
        text_masks = torch.zeros(MAX_OBJS, device=dev, dtype=dtype)
        image_masks = torch.zeros(MAX_OBJS, device=dev, dtype=dtype)
        text = torch.zeros(MAX_OBJS, hidden, device=dev, dtype=dtype)
        image = torch.zeros(MAX_OBJS, hidden, device=dev, dtype=dtype)
        for i, (b, phrase, picture) in enumerate(zip(boxes, phrases, images)):
            box[i] = torch.tensor(b, dtype=dtype)
            masks[i] = 1
            if phrase is not None:
                text[i] = self.pooled_text([phrase])[0]
                text_masks[i] = 1
            if picture is not None:
                image[i] = self.clip_feature(picture, normalize)[0]
                image_masks[i] = 1

        def rows(t: torch.Tensor) -> torch.Tensor:
            return t.unsqueeze(0).repeat(repeat, *([1] * t.ndim))

        return {
            "boxes": rows(box),
            "masks": rows(masks),
            "phrases_masks": rows(text_masks) * self._user_mask(phrases_mask),
            "image_masks": rows(image_masks) * self._user_mask(images_mask),
            "phrases_embeddings": rows(text),
            "image_embeddings": rows(image),
        }

    def _user_mask(self, mask: int | Sequence[int] | None) -> torch.Tensor:
        out = torch.ones(1, MAX_OBJS, device=self.device, dtype=self.text_encoder.dtype)
        if mask is None:
            return out
        if isinstance(mask, int):
            return out * mask
        for i, value in enumerate(mask):
            out[0, i] = value
        return out
