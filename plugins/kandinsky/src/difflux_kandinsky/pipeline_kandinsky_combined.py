"""Kandinsky 2.1 in one call: the prior and a 2.1 decoder, sharing the components of one folder."""

from __future__ import annotations

from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion.images import ImageInput
from difflux_stable_diffusion.prompts import prompt_list

from .pipeline_kandinsky import (
    KandinskyImg2ImgPipeline,
    KandinskyInpaintPipeline,
    KandinskyPipeline,
    KandinskyPriorPipeline,
)
from .pipeline_kandinsky2_2_combined import _Combined
from .pipeline_kandinsky2_2_prior import Generator, Prompt

__all__ = ["KandinskyCombinedPipeline", "KandinskyImg2ImgCombinedPipeline", "KandinskyInpaintCombinedPipeline"]


class _Combined21(_Combined):
    """The Kandinsky 2.1 prior (``prior_*``) and a 2.1 decoder (``text_encoder``, ``tokenizer``, ``unet``,
    ``scheduler``, ``movq``) in one pipeline; ``prior_pipe`` / ``decoder_pipe`` share the component objects."""

    model_cpu_offload_seq = "text_encoder->unet->movq->prior_prior->prior_image_encoder->prior_text_encoder"
    _prior_class = KandinskyPriorPipeline

    def __init__(  # type: ignore[no-untyped-def]
        self,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Scheduler,
        movq: Any,
        prior_prior: Any,
        prior_image_encoder: Any,
        prior_text_encoder: Any,
        prior_tokenizer: Any,
        prior_scheduler: Scheduler,
        prior_image_processor: Any,
    ):
        super(_Combined, self).__init__()
        self._setup(locals())

    def _decoder_prompt(self, prompt: Prompt, num_images_per_prompt: int) -> dict[str, Any]:
        """The 2.1 decoder reads the text too: each prompt repeated for its images.

        :raises TypeError: for a prompt that is not a string or a list of strings.
        """
        if not isinstance(prompt, (str, list, tuple)):
            raise TypeError(f"{type(self).__name__}: prompt must be a string or a list of strings, got {prompt!r}")
        return {"prompt": [p for p in (prompt_list(prompt) or []) for _ in range(num_images_per_prompt)]}


class KandinskyCombinedPipeline(_Combined21):
    """Kandinsky 2.1 text-to-image: :class:`KandinskyPriorPipeline` then :class:`KandinskyPipeline`."""

    _decoder_class = KandinskyPipeline

    def __call__(
        self,
        prompt: Prompt,
        negative_prompt: Prompt | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        return_dict: bool = True,
    ) -> Any:
        """Images for ``prompt``; ``negative_prompt`` steers the prior (as in Diffusers), ``latents`` is the
        prior's starting noise, ``prior_*`` are the prior's options and the rest the decoder's
        (:class:`KandinskyPipeline`).

        :raises TypeError | ValueError: for bad input, before the first model runs.
        """
        return self._call(locals())


class KandinskyImg2ImgCombinedPipeline(_Combined21):
    """Kandinsky 2.1 image-to-image: :class:`KandinskyPriorPipeline` then :class:`KandinskyImg2ImgPipeline`."""

    _decoder_class = KandinskyImg2ImgPipeline

    def __call__(
        self,
        prompt: Prompt,
        image: ImageInput,
        negative_prompt: Prompt | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        strength: float = 0.3,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        return_dict: bool = True,
    ) -> Any:
        """``image`` transformed towards ``prompt``: :class:`KandinskyCombinedPipeline`'s arguments plus ``image``
        and ``strength`` (:class:`KandinskyImg2ImgPipeline`).

        :raises TypeError | ValueError: for bad input, before the first model runs.
        """
        return self._call(locals())


class KandinskyInpaintCombinedPipeline(_Combined21):
    """Kandinsky 2.1 inpainting: :class:`KandinskyPriorPipeline` then :class:`KandinskyInpaintPipeline`."""

    _decoder_class = KandinskyInpaintPipeline

    def __call__(
        self,
        prompt: Prompt,
        image: ImageInput,
        mask_image: ImageInput,
        negative_prompt: Prompt | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        return_dict: bool = True,
    ) -> Any:
        """Inpaint ``image`` where ``mask_image`` is white, towards ``prompt``: :class:`KandinskyCombinedPipeline`'s
        arguments plus ``image`` and ``mask_image`` (:class:`KandinskyInpaintPipeline`).

        :raises TypeError | ValueError: for bad input, before the first model runs.
        """
        return self._call(locals())
