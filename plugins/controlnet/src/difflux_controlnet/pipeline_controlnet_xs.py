"""Stable Diffusion with ControlNet-XS: the SD pipeline whose UNet is fused with a ControlNet-XS adapter.

:class:`ControlNetXSSteps` is the mixin the SD and SDXL ControlNet-XS pipelines share: it checks
the control arguments before any model runs, prepares the condition image and gives the base
loop a ``Denoise.control`` function that adds the fused UNet's control inputs
(``controlnet_cond``, ``conditioning_scale``, ``apply_control``) to each UNet call. The denoising
loop itself is the SD base's.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from difflux.pipeline_utils import StepCallback
from difflux.protocols import Scheduler
from difflux_models.unet_2d_condition import UNet2DConditionModel
from difflux_stable_diffusion._base import Control, Denoise, StableDiffusionBase, call_arguments
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.images import ImageInput, default_size, is_image_input, preprocess_control_image
from difflux_stable_diffusion.prompts import Prompt, PromptEncoderMixin

from .controlnet_xs import ControlNetXSAdapter, UNetControlNetXSModel
from .pipeline_adapter import image_count
from .pipeline_controlnet import SDCallSteps

__all__ = ["ControlNetXSSteps", "StableDiffusionControlNetXSPipeline", "XSArgs", "fuse_unet"]

Generator = torch.Generator | Sequence[torch.Generator] | None


def fuse_unet(unet: Any, controlnet: Any) -> Any:
    """A plain ``UNet2DConditionModel`` fused with ``controlnet`` (as Diffusers' pipelines do); else ``unet``."""
    if isinstance(unet, UNet2DConditionModel) and isinstance(controlnet, ControlNetXSAdapter):
        return UNetControlNetXSModel.from_unet(unet, controlnet)
    return unet


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


@dataclasses.dataclass
class XSArgs:
    """The checked ControlNet-XS arguments of one call."""

    image: Any
    scale: float
    start: float
    end: float


class ControlNetXSSteps:
    """Mixin: ControlNet-XS conditioning for a ``StableDiffusionBase`` pipeline whose ``unet`` is a
    :class:`UNetControlNetXSModel`."""

    unet: Any
    vae_scale_factor: int
    _callback_tensor_inputs: tuple[str, ...]

    def check_xs(
        self,
        image: Any,
        controlnet_conditioning_scale: Any,
        control_guidance_start: Any,
        control_guidance_end: Any,
        batch: int,
    ) -> XSArgs:
        """Check the control arguments against the fused UNet and the prompt batch.

        :raises TypeError | ValueError: naming the argument, what was wrong and what to pass.
        """
        name = type(self).__name__
        if not isinstance(self.unet, UNetControlNetXSModel):
            raise TypeError(
                f"{name}: unet must be a UNetControlNetXSModel (or a UNet2DConditionModel passed with the "
                f"ControlNetXSAdapter, which the pipeline fuses), got {type(self.unet).__name__}"
            )
        if image is None:
            raise ValueError(f"{name} needs image= (the condition image: PIL, numpy array or torch tensor)")
        if not is_image_input(image):
            raise TypeError(
                f"{name}: image must be a PIL image, a numpy array or a torch tensor (or a list of them), "
                f"got {type(image).__name__}"
            )
        count = image_count(image)
        if count not in (1, batch):
            raise ValueError(f"{name}: image holds {count} condition images for {batch} prompts; pass 1 or {batch}")
        if not _number(controlnet_conditioning_scale):
            raise TypeError(
                f"{name}: controlnet_conditioning_scale must be a finite number (one ControlNet-XS), "
                f"got {controlnet_conditioning_scale!r}"
            )
        start, end = control_guidance_start, control_guidance_end
        if not (_number(start) and _number(end)):
            raise ValueError(f"{name}: control_guidance_start/end must be numbers, got {start!r} and {end!r}")
        if not 0.0 <= float(start) < float(end) <= 1.0:
            raise ValueError(
                f"{name}: the control guidance window must satisfy 0 <= start < end <= 1, got start={start}, end={end}"
            )
        return XSArgs(image, float(controlnet_conditioning_scale), float(start), float(end))

    def xs_image(
        self, args: XSArgs, height: int | None, width: int | None, batch: int, per_prompt: int, guidance: bool
    ) -> torch.Tensor:
        """The condition image ``(batch * per_prompt [* 2], C, H, W)`` in ``[0, 1]`` in the UNet's dtype; its
        size is ``height`` x ``width``, by default the image's own rounded down to the VAE's factor."""
        height, width = default_size(args.image, height, width, self.vae_scale_factor)
        image = preprocess_control_image(args.image, height, width, multiple=self.vae_scale_factor).float()
        image = image.repeat_interleave(batch * per_prompt if image.shape[0] == 1 else per_prompt, dim=0)
        image = image.to(device=self.device, dtype=self.unet.dtype)  # type: ignore[attr-defined]
        return torch.cat([image] * 2) if guidance else image

    def xs_step(self, args: XSArgs, image: torch.Tensor, steps: int) -> Control:
        """The ``Denoise.control`` function: the control inputs of the fused UNet at step ``i``.

        The control branch is on when ``i / steps >= start`` and ``(i + 1) / steps <= end``.
        """

        halves: dict[int, torch.Tensor] = {image.shape[0]: image}  # one tensor per batch size: the fused UNet
        # reuses the embedding of the condition tensor it saw last

        def control(
            i: int,
            t: torch.Tensor,
            latents: torch.Tensor,
            embeds: torch.Tensor,
            added: dict[str, Any] | None,
            tensors: dict[str, torch.Tensor | None],
        ) -> dict[str, Any]:
            on = i / steps >= args.start and (i + 1) / steps <= args.end
            b = latents.shape[0]
            cond = halves.setdefault(b, image[-b:])
            return {"controlnet_cond": cond, "conditioning_scale": args.scale, "apply_control": on}

        return control


class StableDiffusionControlNetXSPipeline(PromptEncoderMixin, SDCallSteps, ControlNetXSSteps, StableDiffusionBase):
    """Text-to-image with Stable Diffusion 1.x / 2.x steered by ControlNet-XS (Zavadski et al., arXiv:2312.06573).

    ``unet`` is a :class:`UNetControlNetXSModel`; a plain ``UNet2DConditionModel`` is fused with
    ``controlnet`` on construction, as in Diffusers.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: ClassVar[tuple[str, ...]] = ("safety_checker", "feature_extractor")

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        controlnet: Any,
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
            unet=fuse_unet(unet, controlnet),
            controlnet=controlnet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
        )

    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
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
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float = 1.0,
        control_guidance_start: float = 0.0,
        control_guidance_end: float = 1.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt`` that follow the condition ``image``.

        :param image: the condition image (PIL, ``HWC`` array or ``CHW``/``NCHW`` tensor in ``[0, 1]``,
            or a list per prompt); its size sets ``height`` / ``width`` when they are not given.
        :param controlnet_conditioning_scale: multiplies every control-to-base connection (a float).
        :param control_guidance_start: the fraction of steps before which the control branch is off.
        :param control_guidance_end: the fraction of steps after which it is off again.

        The other arguments are :class:`~difflux_stable_diffusion.StableDiffusionPipeline`'s.
        Returns ``StableDiffusionPipelineOutput`` (or ``(images, nsfw flags)``).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        a = call_arguments(locals())
        batch = self.check_inputs(Inputs.of(a, image=None))
        xs = self.check_xs(image, controlnet_conditioning_scale, control_guidance_start, control_guidance_end, batch)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(a)
        embeds = self.prompt_of(a, opts)
        cond_image = self.xs_image(xs, height, width, batch, num_images_per_prompt, opts.guidance)
        height, width = cond_image.shape[-2:]
        steps = self.schedule(num_inference_steps)
        shape = self.latent_shape(total, height, width, channels=self.unet.in_channels)
        latents = self.prepare_latents(shape, embeds.embeds.dtype, generator, latents)
        run = Denoise(steps, embeds.for_unet(), opts)
        run.control = self.xs_step(xs, cond_image, len(steps))
        try:
            latents = self.denoise(latents, run, embeds.negative)
        finally:
            self.unet.forget_condition()
        return self.output(latents, output_type, return_dict, generator)
