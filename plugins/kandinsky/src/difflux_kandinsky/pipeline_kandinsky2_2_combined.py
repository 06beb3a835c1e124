"""Kandinsky 2.2 in one call: the prior and a decoder, sharing the components of one folder."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from difflux import DiffusionPipeline
from difflux.config import read_json
from difflux.errors import LoadError
from difflux.options import LoadOptions
from difflux.pipeline_utils import StepCallback
from difflux.protocols import Scheduler
from difflux.registry import get_registry
from difflux_stable_diffusion.images import ImageInput

from ._decoder import KandinskyV22DecoderBase
from .pipeline_kandinsky2_2 import KandinskyV22Img2ImgPipeline, KandinskyV22InpaintPipeline, KandinskyV22Pipeline
from .pipeline_kandinsky2_2_prior import Generator, KandinskyV22PriorPipeline, Prompt

__all__ = [
    "ConnectedPriorMixin",
    "KandinskyV22CombinedPipeline",
    "KandinskyV22Img2ImgCombinedPipeline",
    "KandinskyV22InpaintCombinedPipeline",
]


class ConnectedPriorMixin:
    """``from_pretrained`` for combined pipelines (before ``DiffusionPipeline`` in the bases) whose
    ``prior_*`` components may come from the prior repo a decoder's model card names (Kandinsky,
    Würstchen)."""

    config_name: str

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Load a combined folder, or a decoder folder (or repo) whose model card names its prior.

        Published decoders (``kandinsky-community/kandinsky-2-2-decoder``) are decoder-only pipelines whose
        ``README.md`` metadata lists the prior repo under ``prior:``; loading one into a combined class
        loads that prior too (Diffusers' connected pipelines). Keyword arguments starting with ``prior_``
        replace prior components; load options apply to both.

        :raises LoadError: when a decoder folder's card names no prior.
        """
        options, rest = LoadOptions.split(kwargs)
        folder = get_registry().resolve_pretrained(pretrained_model_name_or_path, options)
        index = read_json(folder / cls.config_name, cls.config_name)
        if any(key.startswith("prior_") for key in index):
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)  # type: ignore[misc]
        prior_ref = connected_prior(pretrained_model_name_or_path, folder, options)
        if prior_ref is None:
            raise LoadError(
                f"{cls.__name__}.from_pretrained({str(pretrained_model_name_or_path)!r}): a decoder folder "
                f"({index.get('_class_name')}) whose README.md names no prior (metadata 'prior: [repo]'); load "
                "the prior and the decoder separately, or pass a combined folder"
            )
        names = {k: v for k, v in kwargs.items() if k not in rest or not k.startswith("prior_")}
        decoder = DiffusionPipeline.from_pretrained(pretrained_model_name_or_path, **names)
        prior_kwargs = {k: v for k, v in kwargs.items() if k not in rest} | {
            k.removeprefix("prior_"): v for k, v in rest.items() if k.startswith("prior_")
        }
        prior = DiffusionPipeline.from_pretrained(prior_ref, **prior_kwargs)
        return cls(**decoder.components, **{f"prior_{k}": v for k, v in prior.components.items()})


class _Combined(ConnectedPriorMixin, DiffusionPipeline):
    """The prior (``prior_*`` components) and a decoder (``unet``, ``scheduler``, ``movq``) in one pipeline.

    ``prior_pipe`` and ``decoder_pipe`` hold the same component objects, so the combined pipeline's
    ``components`` build either stage on its own.
    """

    model_cpu_offload_seq = "prior_text_encoder->prior_image_encoder->unet->movq"
    _decoder_class: type[KandinskyV22DecoderBase] = KandinskyV22Pipeline
    _prior_class: type[KandinskyV22PriorPipeline] = KandinskyV22PriorPipeline
    decoder_pipe: Any

    def __init__(
        self,
        unet: Any,
        scheduler: Scheduler,
        movq: Any,
        prior_prior: Any,
        prior_image_encoder: Any,
        prior_text_encoder: Any,
        prior_tokenizer: Any,
        prior_scheduler: Scheduler,
        prior_image_processor: Any,
    ) -> None:
        super().__init__()
        self._setup(locals())

    def _setup(self, components: Mapping[str, Any]) -> None:
        """Register the components (the constructor's ``locals()``) and build ``prior_pipe`` (on the ``prior_*``
        ones, without the prefix) and ``decoder_pipe`` (on the others) on the same objects."""
        named = {key: value for key, value in components.items() if key not in ("self", "__class__")}
        self.register_modules(**named)
        prior = {key.removeprefix("prior_"): value for key, value in named.items() if key.startswith("prior_")}
        self.prior_pipe = self._prior_class(**prior)
        self.decoder_pipe = self._decoder_class(**{key: v for key, v in named.items() if not key.startswith("prior_")})

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        super().set_progress_bar_config(**kwargs)
        self.prior_pipe.set_progress_bar_config(**kwargs)
        self.decoder_pipe.set_progress_bar_config(**kwargs)

    def _decoder_prompt(self, prompt: Prompt, num_images_per_prompt: int) -> dict[str, Any]:
        """What the decoder takes of the prompt (2.2's decoders take none: the image embeddings carry it)."""
        return {}

    def _call(self, call: Mapping[str, Any]) -> Any:
        """A combined call from its arguments (``locals()``): every input checked before the first model runs,
        then the prior on its share of the arguments (:func:`split_call`), then the decoder on the rest with the
        prior's ``image_embeds`` / ``negative_image_embeds`` and ``image`` / ``mask_image`` repeated to one per
        embedding."""
        prior, args = split_call(call)
        decoder = self.decoder_pipe
        images = [name for name in ("image", "mask_image") if name in args]
        for name in images:
            decoder.check_image(args[name], name)
        decoder.check_run(
            1,
            args["height"],
            args["width"],
            args["num_inference_steps"],
            1,
            None,
            None,
            args["output_type"],
            args.get("callback_on_step_end_tensor_inputs", ("latents",)),
            strength=args.get("strength"),
        )
        args |= self._decoder_prompt(prior["prompt"], prior["num_images_per_prompt"])
        embeds, negative = self.prior_pipe(**prior, output_type="pt", return_dict=False)
        for name in images:
            args[name] = _per_embedding(args[name], embeds.shape[0])
        return decoder(image_embeds=embeds, negative_image_embeds=negative, **args)


class KandinskyV22CombinedPipeline(_Combined):
    """Kandinsky 2.2 text-to-image: :class:`KandinskyV22PriorPipeline` then :class:`KandinskyV22Pipeline`."""

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
        return_dict: bool = True,
        prior_callback_on_step_end: StepCallback | None = None,
        prior_callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Images for ``prompt``.

        :param latents: the prior's starting noise ``(N, D)`` (as Diffusers passes ``latents`` to the prior).
        :param prior_guidance_scale: the prior's guidance; ``guidance_scale`` is the decoder's.
        :param prior_num_inference_steps: the prior's steps; ``num_inference_steps`` the decoder's.

        The other arguments are :class:`KandinskyV22PriorPipeline`'s and :class:`KandinskyV22Pipeline`'s.

        :raises TypeError | ValueError: for bad input, before the first model runs.
        """
        return self._call(locals())


class KandinskyV22Img2ImgCombinedPipeline(_Combined):
    """Kandinsky 2.2 image-to-image: :class:`KandinskyV22PriorPipeline` then :class:`KandinskyV22Img2ImgPipeline`."""

    _decoder_class = KandinskyV22Img2ImgPipeline

    def __call__(
        self,
        prompt: Prompt,
        image: ImageInput,
        negative_prompt: Prompt | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        strength: float = 0.3,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        prior_callback_on_step_end: StepCallback | None = None,
        prior_callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """``image`` transformed towards ``prompt``; the arguments are :class:`KandinskyV22CombinedPipeline`'s plus
        ``image`` and ``strength`` (:class:`KandinskyV22Img2ImgPipeline`).

        :raises TypeError | ValueError: for bad input, before the first model runs.
        """
        return self._call(locals())


class KandinskyV22InpaintCombinedPipeline(_Combined):
    """Kandinsky 2.2 inpainting: :class:`KandinskyV22PriorPipeline` then :class:`KandinskyV22InpaintPipeline`."""

    _decoder_class = KandinskyV22InpaintPipeline

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
        return_dict: bool = True,
        prior_callback_on_step_end: StepCallback | None = None,
        prior_callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Inpaint ``image`` where ``mask_image`` is white, towards ``prompt``.

        The arguments are :class:`KandinskyV22CombinedPipeline`'s plus ``image`` and ``mask_image``
        (:class:`KandinskyV22InpaintPipeline`).

        :raises TypeError | ValueError: for bad input, before the first model runs.
        """
        return self._call(locals())


#: what a combined call gives the prior besides its ``prior_*`` arguments and ``generator`` (which both stages take)
PRIOR_ARGUMENTS = ("prompt", "negative_prompt", "num_images_per_prompt", "latents")


def split_call(call: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A combined pipeline's call arguments (its ``locals()``) as ``(the prior's, the decoder's)`` keyword arguments.

    The prior takes :data:`PRIOR_ARGUMENTS`, ``generator`` and the ``prior_*`` arguments without their prefix
    (``prior_guidance_scale`` is its ``guidance_scale``); the decoder takes the rest, ``generator`` included.
    ``latents`` is the prior's starting noise, as Diffusers passes it.
    """
    prior: dict[str, Any] = {"generator": call["generator"]}
    decoder: dict[str, Any] = {}
    for key, value in call.items():
        if key in PRIOR_ARGUMENTS or key.startswith("prior_"):
            prior[key.removeprefix("prior_")] = value
        elif key not in ("self", "__class__"):
            decoder[key] = value
    return prior, decoder


def _per_embedding(images: Any, count: int) -> Any:
    """A list of images repeated to ``count`` entries where it divides ``count``; anything else unchanged."""
    items = [images] if not isinstance(images, (list, tuple)) else list(images)
    if isinstance(images, torch.Tensor) or not items:
        return images
    return items * (count // len(items)) if count % len(items) == 0 else items


def connected_prior(name_or_path: str | os.PathLike[str], folder: Path, options: LoadOptions) -> str | None:
    """The prior a decoder's model card names (``prior: [repo id or path]`` in ``README.md``'s metadata).

    A local folder's card is read where it is; for a repo id the card is fetched with ``huggingface_hub``
    (honouring ``revision``, ``cache_dir``, ``token``, ``local_files_only``). ``None`` when there is none.
    """
    card = folder / "README.md"
    if not card.is_file() and not Path(name_or_path).exists():
        from huggingface_hub import hf_hub_download

        try:
            card = Path(
                hf_hub_download(
                    str(name_or_path),
                    "README.md",
                    revision=options.revision,
                    cache_dir=None if options.cache_dir is None else Path(options.cache_dir),
                    token=options.token,
                    local_files_only=options.local_files_only,
                )
            )
        except Exception:  # no card, or offline without one cached: no connected prior
            return None
    if not card.is_file():
        return None
    from huggingface_hub.repocard import metadata_load

    meta = metadata_load(card) or {}
    prior = meta.get("prior")
    if isinstance(prior, list) and prior and isinstance(prior[0], str):
        return prior[0]
    return prior if isinstance(prior, str) else None
