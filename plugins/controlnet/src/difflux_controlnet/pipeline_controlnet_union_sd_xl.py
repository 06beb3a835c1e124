"""Stable Diffusion XL with a Union ControlNet (ControlNet++): text-to-image, image-to-image and inpainting.

These are the SDXL ControlNet pipelines of :mod:`.pipeline_controlnet_sd_xl` with a
:class:`~difflux_controlnet.ControlNetUnionModel` (or several, a
:class:`~difflux_controlnet.MultiControlNetUnionModel`) and one more argument, ``control_mode``:
which kind of condition each ``control_image`` is (for ``xinsir/controlnet-union-sdxl-1.0``:
0 openpose, 1 depth, 2 hed/pidi/scribble/ted, 3 canny/lineart/anime lineart/mlsd, 4 normal,
5 segment; the ProMax version adds 6 tile and 7 repaint).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import StepCallback
from difflux_stable_diffusion._base import Control, Denoise, call_arguments
from difflux_stable_diffusion.images import ImageInput
from difflux_stable_diffusion.prompts import Prompt

from .control import ControlArgs, _fit, keep_table
from .controlnet_union import ControlNetUnionModel, MultiControlNetUnionModel
from .pipeline_controlnet_sd_xl import (
    Generator,
    SDXLControlSteps,
    Size,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
)

__all__ = [
    "StableDiffusionXLControlNetUnionImg2ImgPipeline",
    "StableDiffusionXLControlNetUnionInpaintPipeline",
    "StableDiffusionXLControlNetUnionPipeline",
]

ControlMode = int | Sequence[int] | None


def as_union_controlnet(controlnet: Any) -> Any:
    """A list or tuple of Union ControlNets becomes a :class:`MultiControlNetUnionModel` (as Diffusers does).

    :raises TypeError: for anything but Union ControlNets.
    """
    nets = list(controlnet) if isinstance(controlnet, (list, tuple)) else [controlnet]
    if isinstance(controlnet, MultiControlNetUnionModel):
        return controlnet
    bad = [type(n).__name__ for n in nets if not isinstance(n, ControlNetUnionModel)]
    if bad:
        raise TypeError(
            f"the Union pipelines take ControlNetUnionModel (or a list of them), got {', '.join(bad)}; use "
            "StableDiffusionXLControlNetPipeline for a plain ControlNetModel"
        )
    return MultiControlNetUnionModel(nets) if isinstance(controlnet, (list, tuple)) else controlnet


@dataclasses.dataclass
class UnionArgs(ControlArgs):
    """The checked Union arguments: per condition image (one per mode, or one per net) its control mode."""

    modes: list[int] = dataclasses.field(default_factory=list)


def _mode(value: Any) -> int | None:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return None


class UnionControlSteps(SDXLControlSteps):
    """Mixin: the Union ControlNet's check (``control_mode``) and per-step residuals."""

    _control_image_name = "control_image"

    @staticmethod
    def wrap_controlnet(controlnet: Any) -> Any:
        return as_union_controlnet(controlnet)

    def control_args(self, a: dict[str, Any], batch: int) -> UnionArgs:
        """Check ``control_mode`` and the condition images against the net(s).

        One net: ``control_image`` holds one image per mode (a single image with a single mode may be
        given bare). Several nets: one image and one mode per net.

        :raises TypeError | ValueError: naming the argument, what was wrong and what to pass.
        """
        name = type(self).__name__
        multi = isinstance(self.controlnet, MultiControlNetUnionModel)
        nets = self._nets()
        given = a["control_mode"]
        if given is None:
            raise ValueError(
                f"{name} needs control_mode= (which kind of condition each control_image is: an int, or a list "
                "of ints)"
            )
        raw = list(given) if isinstance(given, (list, tuple)) else [given]
        if multi:  # one mode per net; Diffusers also takes it wrapped in a one-element list
            raw = [m[0] if isinstance(m, (list, tuple)) and len(m) == 1 else m for m in raw]
        modes = [_mode(m) for m in raw]
        if not modes or any(m is None for m in modes):
            raise TypeError(f"{name}: control_mode must be an int or a list of ints, got {given!r}")
        if multi and len(modes) != len(nets):
            raise ValueError(f"{name}: control_mode has {len(modes)} entries for {len(nets)} Union ControlNets; "
                             "pass one mode per net")  # fmt: skip
        for k, mode in enumerate(modes):
            net = nets[k] if multi else nets[0]
            count = int(net.config.num_control_type)
            if mode is None or not 0 <= mode < count:
                raise ValueError(f"{name}: control_mode {mode} is out of range; this ControlNet knows modes "
                                 f"0..{count - 1} (num_control_type={count})")  # fmt: skip
        image = a["control_image"]
        if not multi and len(modes) == 1 and isinstance(image, (list, tuple)) and len(image) == 1:
            image = image[0]
        unit = "Union ControlNet" if multi else "control mode"
        base = self.check_control(
            image,
            a["controlnet_conditioning_scale"],
            a["control_guidance_start"],
            a["control_guidance_end"],
            a["guess_mode"],
            batch,
            image_name="control_image",
            slots=len(modes),
            unit=unit,
        )
        return UnionArgs(**dataclasses.asdict(base), modes=[int(m) for m in modes if m is not None])

    def attach_control(
        self, run: Denoise, args: ControlArgs, images: list[torch.Tensor], steps: int, total: int
    ) -> Denoise:
        if not isinstance(args, UnionArgs):
            raise TypeError("UnionControlSteps.attach_control: internal check failed: UnionArgs")
        run.extra[self._control_image_name] = images[0] if len(images) == 1 else None
        run.control = self.union_step(args, images, steps, total)
        return run

    def union_step(self, args: UnionArgs, images: list[torch.Tensor], steps: int, total: int) -> Control:
        """The ``Denoise.control`` function of a Union run.

        One net with several modes runs every step (its residuals do not vanish when every mode's
        weight is 0); otherwise a step where every weight is 0 skips the nets, as Diffusers does.
        """
        multi = isinstance(self.controlnet, MultiControlNetUnionModel)
        nets = typing_nets(self._nets())
        keep = keep_table(args, steps)

        def control(
            i: int,
            t: torch.Tensor,
            latents: torch.Tensor,
            embeds: torch.Tensor,
            added: dict[str, Any] | None,
            tensors: dict[str, torch.Tensor | None],
        ) -> dict[str, Any]:
            weights = [c * k for c, k in zip(args.scales, keep[min(i, steps - 1)], strict=True)]
            if (multi or len(weights) == 1) and not any(weights):
                return {}
            half = args.guess_mode and latents.shape[0] > total
            x = latents[-total:] if half else latents
            text = embeds[-total:] if half else embeds
            extra = None if added is None else {k: v[-x.shape[0] :] for k, v in added.items()}
            conds = [_fit(img, x.shape[0]) for img in images]
            kw = {"guess_mode": args.guess_mode, "added_cond_kwargs": extra, "return_dict": False}
            where = {"device": x.device, "dtype": text.dtype}
            if multi:
                kinds = [net.control_type([m], x.shape[0], **where) for net, m in zip(nets, args.modes, strict=True)]
                modes = [[m] for m in args.modes]
                down, mid = self.controlnet(x, t, text, [[c] for c in conds], kinds, modes, weights, **kw)
            else:
                kind = nets[0].control_type(args.modes, x.shape[0], **where)
                down, mid = self.controlnet(x, t, text, conds, kind, args.modes, conditioning_scale=weights, **kw)
            if down is None or mid is None:
                return {}
            if half:
                down = [torch.cat([torch.zeros_like(d), d]) for d in down]
                mid = torch.cat([torch.zeros_like(mid), mid])
            return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}

        return control


def typing_nets(nets: Sequence[Any]) -> list[ControlNetUnionModel]:
    """The nets as Union ControlNets.

    :raises TypeError: for a net that is not one.
    """
    out = [n for n in nets if isinstance(n, ControlNetUnionModel)]
    if len(out) != len(nets):
        raise TypeError("the Union pipelines need ControlNetUnionModel nets")
    return out


class StableDiffusionXLControlNetUnionPipeline(UnionControlSteps, StableDiffusionXLControlNetPipeline):
    """Text-to-image with SDXL steered by a Union ControlNet (several condition types, one net) or several."""

    _callback_tensor_inputs = ("latents", "prompt_embeds", "add_text_embeds", "add_time_ids")

    def __call__(  # type: ignore[override]
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        control_image: ImageInput | Sequence[ImageInput] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
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
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | Sequence[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
        control_mode: ControlMode = None,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt`` that follow the condition image(s).

        :param control_image: one net: one condition image per mode in ``control_mode`` (a bare image
            with a single mode); several nets: one image per net. Each is PIL, ``HWC`` array or
            ``CHW``/``NCHW`` tensor in ``[0, 1]``; the first one's size sets ``height`` / ``width``.
        :param control_mode: the kind of each condition image: an int or a list of ints (one net: one
            per image; several nets: one per net), below the net's ``num_control_type``.
        :param controlnet_conditioning_scale: a number, or one per image (one net) / per net. With one
            net and several modes it weighs each condition inside the net.
        :param control_guidance_start: / :param control_guidance_end: per image (one net) or per net.

        The other arguments are :class:`StableDiffusionXLControlNetPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        return self.txt2img(call_arguments(locals()))


class StableDiffusionXLControlNetUnionImg2ImgPipeline(UnionControlSteps, StableDiffusionXLControlNetImg2ImgPipeline):
    """Image-to-image with SDXL steered by Union ControlNet(s); ``control_mode`` as in
    :class:`StableDiffusionXLControlNetUnionPipeline`."""

    _callback_tensor_inputs = ("latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "control_image")

    def __call__(  # type: ignore[override]
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        image: ImageInput | None = None,
        control_image: ImageInput | Sequence[ImageInput] | None = None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
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
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | Sequence[float] = 0.8,
        guess_mode: bool = False,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
        control_mode: ControlMode = None,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Transform ``image`` guided by ``prompt`` and the condition image(s) of ``control_mode``.

        The arguments are :class:`StableDiffusionXLControlNetImg2ImgPipeline`'s plus ``control_mode``
        (see :class:`StableDiffusionXLControlNetUnionPipeline`).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        return self.img2img(call_arguments(locals()))


class StableDiffusionXLControlNetUnionInpaintPipeline(UnionControlSteps, StableDiffusionXLControlNetInpaintPipeline):
    """Inpainting with SDXL steered by Union ControlNet(s); ``control_mode`` as in
    :class:`StableDiffusionXLControlNetUnionPipeline` (the ProMax checkpoint's repaint mode is 7)."""

    _callback_tensor_inputs = ("latents", "prompt_embeds", "add_text_embeds", "add_time_ids", "mask",
                               "control_image")  # fmt: skip

    def __call__(  # type: ignore[override]
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        control_image: ImageInput | Sequence[ImageInput] | None = None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 0.9999,
        num_inference_steps: int = 50,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
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
        cross_attention_kwargs: dict[str, Any] | None = None,
        controlnet_conditioning_scale: float | Sequence[float] = 1.0,
        guess_mode: bool = False,
        control_guidance_start: float | Sequence[float] = 0.0,
        control_guidance_end: float | Sequence[float] = 1.0,
        control_mode: ControlMode = None,
        guidance_rescale: float = 0.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Repaint the masked part of ``image`` guided by ``prompt`` and the condition image(s) of ``control_mode``.

        The arguments are :class:`StableDiffusionXLControlNetInpaintPipeline`'s plus ``control_mode``
        (see :class:`StableDiffusionXLControlNetUnionPipeline`).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        return self.inpaint(call_arguments(locals()))
