"""The ControlNet part of a Stable Diffusion pipeline: checks, condition images, and the per-step residuals.

:class:`ControlNetSteps` is a mixin for pipelines built on ``difflux_stable_diffusion._base``: it
checks the ControlNet arguments before any model runs (:meth:`ControlNetSteps.check_control`),
prepares the condition images (:meth:`ControlNetSteps.control_images`) and gives the loop a
``Denoise.control`` function (:meth:`ControlNetSteps.control_step`) that runs the ControlNet(s)
each step and hands their residuals to the UNet. The denoising loop itself is the base's.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from typing import Any

import torch
from difflux_stable_diffusion._base import Control, Denoise
from difflux_stable_diffusion.images import default_size, is_image_input, preprocess_control_image

from .controlnet import ControlNetModel
from .multicontrolnet import MultiControlNetModel

__all__ = ["ControlArgs", "ControlNetSteps", "as_controlnet", "keep_table"]


def as_controlnet(controlnet: Any) -> Any:
    """A list or tuple of ControlNets becomes a :class:`MultiControlNetModel` (as Diffusers does)."""
    if isinstance(controlnet, (list, tuple)):
        return MultiControlNetModel(list(controlnet))
    return controlnet


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


@dataclasses.dataclass
class ControlArgs:
    """The checked ControlNet arguments of one call, one entry per net."""

    images: list[Any]  # per net: the image input as given (one image or a list per prompt)
    scales: list[float]
    starts: list[float]
    ends: list[float]
    guess_mode: bool


class ControlNetSteps:
    """Mixin: ControlNet conditioning for a ``StableDiffusionBase`` pipeline with a ``controlnet`` component."""

    controlnet: Any
    vae_scale_factor: int
    #: the callback name of the prepared condition image (Diffusers: ``image``, or ``control_image`` where
    #: ``image`` is the init image)
    _control_image_name: str = "image"

    def _nets(self) -> list[ControlNetModel]:
        net = self.controlnet
        return [typing.cast(ControlNetModel, n) for n in net.nets] if isinstance(net, MultiControlNetModel) else [net]

    # -- check -----------------------------------------------------------------------------

    def check_control(
        self,
        image: Any,
        controlnet_conditioning_scale: Any,
        control_guidance_start: Any,
        control_guidance_end: Any,
        guess_mode: Any,
        batch: int,
        *,
        image_name: str = "image",
        slots: int | None = None,
        unit: str = "ControlNet",
    ) -> ControlArgs:
        """Check the ControlNet arguments against the nets and the prompt batch; returns them per net.

        ``slots``: how many condition images the call takes (default: one per net; a Union ControlNet
        takes one per control mode, ``unit="control mode"``).

        :raises TypeError | ValueError: naming the argument, what was wrong and what to pass.
        """
        name = type(self).__name__
        nets = self._nets()
        n = len(nets) if slots is None else slots
        multi = isinstance(self.controlnet, MultiControlNetModel) or n > 1
        if not isinstance(guess_mode, bool):
            raise TypeError(f"{name}: guess_mode must be True or False, got {guess_mode!r}")
        # images: one input per net
        if image is None:
            raise ValueError(f"{name} needs {image_name}= (the condition image: PIL, numpy array or torch tensor)")
        if multi:
            if not isinstance(image, (list, tuple)):
                raise TypeError(
                    f"{name}: with {n} {unit}s, {image_name} must be a list with one condition image per "
                    f"{unit}, got {type(image).__name__}"
                )
            per_net = list(image)
            if per_net and all(isinstance(i, (list, tuple)) for i in per_net):
                per_net = [list(t) for t in zip(*per_net, strict=False)]  # [prompt][net] -> [net][prompt]
            if len(per_net) != n:
                raise ValueError(
                    f"{name}: got {len(per_net)} condition images for {n} {unit}s; pass one per {unit}"
                )
        else:
            per_net = [image]
        for i, item in enumerate(per_net):
            where = f"{image_name}[{i}]" if multi else image_name
            if not is_image_input(item):
                raise TypeError(
                    f"{name}: {where} must be a PIL image, a numpy array or a torch tensor (or a list of them), "
                    f"got {type(item).__name__}"
                )
            count = len(item) if isinstance(item, (list, tuple)) else _tensor_batch(item)
            if count not in (1, batch):
                raise ValueError(
                    f"{name}: {where} holds {count} condition images for {batch} prompts; pass 1 or {batch}"
                )
        # conditioning scale: a number, or one per net
        scale = controlnet_conditioning_scale
        scales = list(scale) if isinstance(scale, (list, tuple)) else [scale] * n
        if len(scales) != n or not all(_is_number(s) for s in scales):
            raise ValueError(
                f"{name}: controlnet_conditioning_scale must be a finite number or a list of {n} numbers (one per "
                f"{unit}), got {scale!r}"
            )
        # the guidance window: fractions of the run, per net
        starts, ends = control_guidance_start, control_guidance_end
        if not isinstance(starts, (list, tuple)) and isinstance(ends, (list, tuple)):
            starts = [starts] * len(ends)
        elif not isinstance(ends, (list, tuple)) and isinstance(starts, (list, tuple)):
            ends = [ends] * len(starts)
        elif not isinstance(starts, (list, tuple)):
            starts, ends = [starts] * n, [ends] * n
        starts, ends = list(starts), list(ends)
        if len(starts) != len(ends):
            raise ValueError(
                f"{name}: control_guidance_start has {len(starts)} entries but control_guidance_end {len(ends)}; "
                "give both the same length"
            )
        if len(starts) != n:
            raise ValueError(
                f"{name}: control_guidance_start/end have {len(starts)} entries for {n} {unit}s; pass one per "
                f"{unit} (or a single number)"
            )
        for s, e in zip(starts, ends, strict=True):
            if not (_is_number(s) and _is_number(e)):
                raise ValueError(f"{name}: control_guidance_start/end must be numbers, got {s!r} and {e!r}")
            if not 0.0 <= float(s) < float(e) <= 1.0:
                raise ValueError(
                    f"{name}: the control guidance window must satisfy 0 <= start < end <= 1, got start={s}, end={e}"
                )
        return ControlArgs(
            per_net,
            [float(s) for s in scales],
            [float(s) for s in starts],
            [float(e) for e in ends],
            guess_mode or bool(nets[0].config.global_pool_conditions),
        )

    def control_args(self, a: dict[str, Any], batch: int) -> ControlArgs:
        """The checked ControlNet arguments of call ``a`` (its arguments by name; :meth:`check_control`)."""
        return self.check_control(
            a[self._control_image_name],
            a["controlnet_conditioning_scale"],
            a["control_guidance_start"],
            a["control_guidance_end"],
            a["guess_mode"],
            batch,
            image_name=self._control_image_name,
        )

    # -- condition images --------------------------------------------------------------------

    def control_size(self, args: ControlArgs, height: int | None, width: int | None) -> tuple[int, int]:
        """``(height, width)`` of the run: the given ones, else the first condition image's (rounded down)."""
        return default_size(args.images[0], height, width, self.vae_scale_factor)

    def control_images(
        self, args: ControlArgs, height: int, width: int, total: int, per_prompt: int, guidance: bool
    ) -> list[torch.Tensor]:
        """The condition images per net: ``(total, C, height, width)`` in ``[0, 1]`` in the ControlNet's dtype
        (doubled for classifier-free guidance unless in guess mode, as the UNet batch is)."""
        out = []
        device, dtype = self._control_device(), self._nets()[0].dtype
        for item in args.images:
            image = preprocess_control_image(item, height, width, multiple=self.vae_scale_factor)
            image = image.float().repeat_interleave(total if image.shape[0] == 1 else per_prompt, dim=0)
            image = image.to(device=device, dtype=dtype)
            if guidance and not args.guess_mode:
                image = torch.cat([image] * 2)
            out.append(image)
        return out

    def _control_device(self) -> torch.device:
        device: torch.device = self.device  # type: ignore[attr-defined]
        return device

    # -- the residuals each step -----------------------------------------------------------

    def attach_control(
        self, run: Denoise, args: ControlArgs, images: list[torch.Tensor], steps: int, total: int
    ) -> Denoise:
        """Give a loop ``run`` the control residuals (:meth:`control_step`) and the condition image a step
        callback may read and replace (under ``_control_image_name``, with a single net).

        ``steps``: the length the guidance windows are fractions of (the run's, before a ``denoising_end`` cut).
        """
        run.extra[self._control_image_name] = images[0] if len(images) == 1 else None
        run.control = self.control_step(args, images, steps, total)
        return run

    def control_step(self, args: ControlArgs, images: list[torch.Tensor], steps: int, total: int) -> Control:
        """The ``Denoise.control`` function: run the ControlNet(s) and return the UNet's residual keywords.

        Net ``k`` is on at step ``i`` when its guidance window covers ``[i / steps, (i + 1) / steps]``.
        In guess mode with guidance, the nets see only the conditional half and the unconditional half
        gets zero residuals. A step where every net is off skips the ControlNets (zero residuals).
        """
        multi = isinstance(self.controlnet, MultiControlNetModel)
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
            if not any(weights):
                return {}
            guiding = latents.shape[0] > total
            half = args.guess_mode and guiding
            x = latents[-total:] if half else latents
            text = embeds[-total:] if half else embeds
            extra = None if added is None else {k: v[-x.shape[0] :] for k, v in added.items()}
            current = images
            replaced = tensors.get(self._control_image_name)
            if not multi and isinstance(replaced, torch.Tensor):
                current = [replaced]
            conds = [_fit(img, x.shape[0]) for img in current]
            kw = {"guess_mode": args.guess_mode, "added_cond_kwargs": extra, "return_dict": False}
            if multi:
                down, mid = self.controlnet(x, t, text, conds, weights, **kw)
            else:
                down, mid = self.controlnet(x, t, text, conds[0], conditioning_scale=weights[0], **kw)
            if half:
                down = [torch.cat([torch.zeros_like(d), d]) for d in down]
                mid = torch.cat([torch.zeros_like(mid), mid])
            return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}

        return control


def keep_table(args: ControlArgs, steps: int) -> list[list[float]]:
    """``[step][net]``: 1.0 where the net's guidance window covers ``[i / steps, (i + 1) / steps]``, else 0.0."""
    return [
        [float(not (i / steps < s or (i + 1) / steps > e)) for s, e in zip(args.starts, args.ends, strict=True)]
        for i in range(steps)
    ]


def _tensor_batch(item: Any) -> int:
    if isinstance(item, torch.Tensor) and item.ndim == 4:
        return int(item.shape[0])
    if hasattr(item, "ndim") and getattr(item, "ndim", 0) == 4:
        return int(item.shape[0])
    return 1


def _fit(image: torch.Tensor, batch: int) -> torch.Tensor:
    """A condition image batch for a ControlNet batch of ``batch`` (the conditional half, or repeated)."""
    if image.shape[0] == batch:
        return image
    if image.shape[0] > batch:
        return image[-batch:]
    return image.repeat(batch // image.shape[0], 1, 1, 1)
