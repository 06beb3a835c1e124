"""Stable Diffusion 1.x / 2.x with T2I-Adapter(s): the SD pipeline plus adapter features inside the UNet's down blocks.

:class:`AdapterSteps` is the mixin every adapter pipeline shares (SD here, SDXL in
``pipeline_adapter_sd_xl``): it checks the adapter arguments before any model runs, runs the
adapter(s) once on the condition image(s) and gives the base loop a ``Denoise.control`` function
that hands the features to the UNet (``down_intrablock_additional_residuals``) for the first
``adapter_conditioning_factor`` of the steps. The denoising loop itself is the SD base's.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Control, StableDiffusionBase, call_arguments
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.images import RESAMPLE, ImageInput, is_image_input
from difflux_stable_diffusion.prompts import Prompt, PromptEncoderMixin

from .multiadapter import MultiAdapter
from .pipeline_controlnet import SDCallSteps
from .t2i_adapter import T2IAdapter

__all__ = [
    "AdapterArgs",
    "AdapterSteps",
    "StableDiffusionAdapterPipeline",
    "adapter_image",
    "as_adapter",
    "image_count",
]

Generator = torch.Generator | Sequence[torch.Generator] | None


def as_adapter(adapter: Any) -> Any:
    """A list or tuple of T2I-Adapters becomes a :class:`MultiAdapter` (as Diffusers does)."""
    if isinstance(adapter, (list, tuple)):
        return MultiAdapter(list(adapter))
    return adapter


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def image_count(item: Any) -> int:
    """How many images an image input holds (a list: its entries; a 4-D array or tensor: its batch)."""
    if isinstance(item, (list, tuple)):
        return sum(image_count(i) for i in item)
    shape = getattr(item, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) == 4 else 1


def _channels(item: Any) -> int | None:
    """The channel count of a condition image input (``None`` when it cannot tell)."""
    first = item[0] if isinstance(item, (list, tuple)) else item
    if isinstance(first, PIL.Image.Image):
        return len(first.getbands())
    if isinstance(first, torch.Tensor):
        return int(first.shape[-3]) if first.ndim >= 3 else 1
    if isinstance(first, np.ndarray):
        return int(first.shape[-1]) if first.ndim >= 3 else 1
    return None


def adapter_image(image: Any, height: int, width: int) -> torch.Tensor:
    """A T2I-Adapter condition image as an ``NCHW`` float32 tensor in ``[0, 1]`` of ``height`` x ``width``.

    PIL images keep their channels (``"L"``: 1, ``"RGB"``: 3) and are resized with Lanczos (as
    Diffusers does); ``HWC``/``NHWC`` numpy arrays in ``[0, 1]`` and ``CHW``/``NCHW`` tensors are
    used as they are, resized (nearest) only when their size differs.
    """
    items = list(image) if isinstance(image, (list, tuple)) else [image]
    if isinstance(items[0], PIL.Image.Image):
        arrays = [np.array(i.resize((width, height), resample=RESAMPLE["lanczos"])) for i in items]
        arrays = [a[None, ..., None] if a.ndim == 2 else a[None] for a in arrays]
        tensor = torch.from_numpy((np.concatenate(arrays).astype(np.float32) / 255.0).transpose(0, 3, 1, 2))
    elif isinstance(items[0], np.ndarray):
        stacked = np.concatenate(items) if items[0].ndim == 4 else np.stack(items)
        stacked = stacked[..., None] if stacked.ndim == 3 else stacked
        tensor = torch.from_numpy(stacked.astype(np.float32).transpose(0, 3, 1, 2))
    else:
        tensor = torch.cat(items) if items[0].ndim == 4 else torch.stack(items)
    if tuple(tensor.shape[-2:]) != (height, width):
        tensor = torch.nn.functional.interpolate(tensor.float(), size=(height, width))
    return tensor


@dataclasses.dataclass
class AdapterArgs:
    """The checked adapter arguments of one call."""

    images: list[Any]  # per adapter: the image input as given
    scales: list[float]  # per adapter
    factor: float  # the fraction of steps that get the features


class AdapterSteps:
    """Mixin: T2I-Adapter conditioning for a ``StableDiffusionBase`` pipeline with an ``adapter`` component."""

    adapter: Any
    vae_scale_factor: int

    def _adapters(self) -> list[T2IAdapter]:
        a = self.adapter
        return [typing.cast(T2IAdapter, x) for x in a.adapters] if isinstance(a, MultiAdapter) else [a]

    def check_adapter(
        self,
        image: Any,
        adapter_conditioning_scale: Any,
        adapter_conditioning_factor: Any,
        batch: int,
        height: int | None,
        width: int | None,
    ) -> AdapterArgs:
        """Check ``image``, ``adapter_conditioning_scale`` and ``adapter_conditioning_factor`` against the
        adapters and the prompt batch.

        :raises TypeError | ValueError: naming the argument, what was wrong and what to pass.
        """
        name = type(self).__name__
        adapters = self._adapters()
        n = len(adapters)
        multi = isinstance(self.adapter, MultiAdapter)
        if image is None:
            raise ValueError(f"{name} needs image= (the condition image: PIL, numpy array or torch tensor)")
        if multi:
            if not isinstance(image, (list, tuple)):
                raise TypeError(
                    f"{name}: with {n} T2I-Adapters (MultiAdapter), image must be a list with one condition image "
                    f"per adapter, got {type(image).__name__}"
                )
            per = list(image)
            if len(per) != n:
                raise ValueError(f"{name}: got {len(per)} condition images for {n} T2I-Adapters; pass one per adapter")
        else:
            per = [image]
        for i, item in enumerate(per):
            where = f"image[{i}]" if multi else "image"
            if not is_image_input(item):
                raise TypeError(
                    f"{name}: {where} must be a PIL image, a numpy array or a torch tensor (or a list of them), "
                    f"got {type(item).__name__}"
                )
            count = image_count(item)
            if count not in (1, batch):
                raise ValueError(
                    f"{name}: {where} holds {count} condition images for {batch} prompts; pass 1 or {batch}"
                )
            channels, wanted = _channels(item), adapters[i].config.in_channels
            if channels is not None and channels != wanted:
                kind = "a grey-scale (mode L)" if wanted == 1 else f"a {wanted}-channel (RGB)" if wanted == 3 else ""
                raise ValueError(
                    f"{name}: {where} has {channels} channels but the adapter takes {wanted} (in_channels); pass "
                    f"{kind or f'a {wanted}-channel'} image"
                )
        scale = adapter_conditioning_scale
        scales = list(scale) if multi and isinstance(scale, (list, tuple)) else [scale] * n
        if len(scales) != n or not all(_is_number(s) for s in scales):
            expected = f"a finite number or a list of {n} numbers (one per adapter)" if multi else "a finite number"
            raise ValueError(f"{name}: adapter_conditioning_scale must be {expected}, got {scale!r}")
        factor = adapter_conditioning_factor
        if not _is_number(factor) or not 0.0 <= float(factor) <= 1.0:
            raise ValueError(
                f"{name}: adapter_conditioning_factor must be a number in [0, 1] (the fraction of steps that get "
                f"the adapter features), got {factor!r}"
            )
        f = adapters[0].downscale_factor
        for key, value in (("height", height), ("width", width)):
            if value is not None and isinstance(value, int) and value % f:
                raise ValueError(
                    f"{name}: {key}={value} must be a multiple of the adapter's downscale factor {f}; "
                    f"use {value - value % f or f}"
                )
        return AdapterArgs(per, [float(s) for s in scales], float(factor))

    def adapter_size(self, args: AdapterArgs, height: int | None, width: int | None) -> tuple[int, int]:
        """``(height, width)``: the given ones, else the first condition image's, rounded down to a
        multiple of the adapter's downscale factor (as Diffusers does).

        :raises ValueError: when the image is smaller than that factor.
        """
        first = args.images[0]
        while isinstance(first, (list, tuple)):
            first = first[0]
        if isinstance(first, PIL.Image.Image):
            h, w = first.height, first.width
        elif isinstance(first, torch.Tensor):
            h, w = int(first.shape[-2]), int(first.shape[-1])
        else:
            h, w = (first.shape[0], first.shape[1]) if first.ndim in (2, 3) else (first.shape[1], first.shape[2])
        f = self.adapter.downscale_factor
        height = height if height is not None else h - h % f
        width = width if width is not None else w - w % f
        if height < f or width < f:
            raise ValueError(
                f"{type(self).__name__}: the condition image is {h}x{w} pixels, smaller than the adapter's "
                f"downscale factor {f}; pass a larger image"
            )
        return height, width

    def adapter_states(
        self, args: AdapterArgs, height: int, width: int, batch: int, per_prompt: int, guidance: bool
    ) -> list[torch.Tensor]:
        """Run the adapter(s) once; the scaled features, batched as the UNet sees them (``batch * per_prompt``
        samples, doubled for classifier-free guidance)."""
        device = self.device  # type: ignore[attr-defined]
        dtype = self.adapter.dtype
        inputs = [adapter_image(item, height, width).to(device=device, dtype=dtype) for item in args.images]
        sizes = {x.shape[0] for x in inputs}
        if len(sizes) > 1:  # one adapter got a batch, another one image: spread the single ones
            inputs = [x.expand(batch, -1, -1, -1) if x.shape[0] == 1 else x for x in inputs]
        if isinstance(self.adapter, MultiAdapter):
            states = self.adapter(inputs, args.scales)
        else:
            states = [s * args.scales[0] for s in self.adapter(inputs[0])]
        total = batch * per_prompt
        out = []
        for s in states:
            s = s.repeat(total, 1, 1, 1) if s.shape[0] == 1 else s.repeat_interleave(per_prompt, dim=0)
            out.append(torch.cat([s] * 2) if guidance else s)
        return out

    def adapter_step(self, states: list[torch.Tensor], active_steps: int) -> Control:
        """The ``Denoise.control`` function: the features for steps ``i < active_steps``, none after."""

        def control(
            i: int,
            t: torch.Tensor,
            latents: torch.Tensor,
            embeds: torch.Tensor,
            added: dict[str, Any] | None,
            tensors: dict[str, torch.Tensor | None],
        ) -> dict[str, Any]:
            if i >= active_steps:
                return {}
            b = latents.shape[0]
            return {"down_intrablock_additional_residuals": [s[-b:] for s in states]}

        return control


class StableDiffusionAdapterPipeline(PromptEncoderMixin, SDCallSteps, AdapterSteps, StableDiffusionBase):
    """Text-to-image with Stable Diffusion 1.x / 2.x steered by one or more T2I-Adapters.

    T2I-Adapter: Mou et al., *T2I-Adapter: Learning Adapters to Dig out More Controllable Ability
    for Text-to-Image Diffusion Models* (2023, arXiv:2302.08453). The adapter(s) run once on the
    condition image(s); their features are added inside the UNet's down blocks at every step
    (or the first ``adapter_conditioning_factor`` of them).
    """

    model_cpu_offload_seq = "text_encoder->adapter->unet->vae"
    _optional_components: ClassVar[tuple[str, ...]] = ("safety_checker", "feature_extractor")

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        adapter: Any,
        scheduler: Scheduler,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__()
        self.warn_about_safety_checker(safety_checker, feature_extractor, requires_safety_checker)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            adapter=as_adapter(adapter),
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
        )

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | Sequence[ImageInput] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        guidance_scale: float = 7.5,
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
        callback_steps: int | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        adapter_conditioning_scale: float | Sequence[float] = 1.0,
        adapter_conditioning_factor: float = 1.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt`` that follow the condition ``image``.

        :param image: the condition image (PIL, ``HWC`` array or ``CHW``/``NCHW`` tensor in ``[0, 1]``,
            or a list per prompt); with a :class:`MultiAdapter`, a list with one per adapter. PIL
            images keep their mode (grey-scale ``"L"`` for 1-channel adapters). Its size, rounded
            down to the adapter's downscale factor, sets ``height`` / ``width`` when not given.
        :param adapter_conditioning_scale: multiplies the adapter features (a number, or one per
            adapter with a MultiAdapter; there the default 1.0 weights every adapter by 1).
        :param adapter_conditioning_factor: the fraction of the steps (from the start) that get the
            features (1.0: all; an extension: Diffusers' SD adapter pipeline always uses all).

        The other arguments are :class:`~difflux_stable_diffusion.StableDiffusionPipeline`'s.
        Returns ``StableDiffusionPipelineOutput`` (or ``(images, nsfw flags)``).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        a = call_arguments(locals())
        batch = self.check_inputs(Inputs.of(a, image=None))
        adapter = self.check_adapter(
            image, adapter_conditioning_scale, adapter_conditioning_factor, batch, height, width
        )
        height, width = self.adapter_size(adapter, height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(a)
        embeds = self.prompt_of(a, opts)
        steps = self.schedule(num_inference_steps, timesteps, sigmas)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        states = self.adapter_states(adapter, height, width, batch, num_images_per_prompt, opts.guidance)
        count = num_inference_steps if timesteps is None and sigmas is None else len(steps)
        run = self.prompt_run(steps, embeds, opts)
        run.control = self.adapter_step(states, int(count * adapter.factor))
        latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)
