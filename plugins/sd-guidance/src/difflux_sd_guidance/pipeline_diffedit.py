"""DiffEdit (Couairon, Verbeek, Schwenk and Cord, *DiffEdit: Diffusion-based semantic image editing
with mask guidance*, ICLR 2023, arXiv:2210.11427) on the SD base, in three calls:

1. :meth:`~StableDiffusionDiffEditPipeline.generate_mask`: where the noise predictions under the
   source and the target prompt differ most (sec. 3.1, step 1);
2. :meth:`~StableDiffusionDiffEditPipeline.invert`: DDIM inversion of the image to the encoding
   strength, keeping every intermediate latent (step 2), optionally with the auto-correlation and KL
   regularisers of Pix2Pix Zero;
3. ``__call__``: denoise from the inverted latents under the target prompt, putting the inverted
   latents back outside the mask after every step (step 3).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from difflux.outputs import BaseOutput
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.torch_utils import randn_tensor
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.prompts import Prompt

from ._inversion import InvertingStableDiffusion, auto_corr_loss, kl_divergence

__all__ = ["DiffEditInversionPipelineOutput", "StableDiffusionDiffEditPipeline", "auto_corr_loss", "kl_divergence"]

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclasses.dataclass
class DiffEditInversionPipelineOutput(BaseOutput):
    """``latents``: ``(batch, steps, C, h, w)``, the inverted latents from the most to the least noisy;
    ``images``: their decodings (``decode_latents=True``), else ``None``."""

    latents: torch.Tensor
    images: list[PIL.Image.Image] | np.ndarray | None = None


def preprocess_mask(mask: Any, batch: int) -> torch.Tensor:
    """A mask (PIL, array or tensor; one or one per prompt) as a binary ``(batch, 1, h, w)`` float tensor.

    :raises ValueError: for a mask with other than one channel, values outside ``[0, 1]``, or a batch
        that does not broadcast to ``batch``.
    """
    if not isinstance(mask, torch.Tensor):
        items: list[Any] = [mask] if isinstance(mask, (PIL.Image.Image, np.ndarray)) else list(mask)
        if isinstance(items[0], PIL.Image.Image):
            items = [np.asarray(m.convert("L"), dtype=np.float32) / 255.0 for m in items]
        if isinstance(items[0], np.ndarray):
            arr = np.stack(items) if items[0].ndim < 3 else np.concatenate(items)
            mask = torch.from_numpy(np.ascontiguousarray(arr))
        else:
            mask = torch.stack(items) if items[0].ndim < 3 else torch.cat(items)
    mask = mask.float().clone()
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[None] if mask.shape[0] == 1 else mask[:, None]
    if mask.shape[1] != 1:
        raise ValueError(f"mask_image must have 1 channel, but has {mask.shape[1]}")
    if batch > 1:
        if mask.shape[0] == 1:
            mask = torch.cat([mask] * batch)
        elif mask.shape[0] != batch:
            raise ValueError(f"mask_image has a batch of {mask.shape[0]}, which does not broadcast to {batch} prompts")
    if mask.min() < 0 or mask.max() > 1:
        raise ValueError("mask_image must have values in [0, 1]")
    binary: torch.Tensor = (mask >= 0.5).float()
    return binary


class StableDiffusionDiffEditPipeline(InvertingStableDiffusion):
    """Text-guided image editing with Stable Diffusion 1.x / 2.x and DiffEdit's automatic mask."""

    _optional_components = ("safety_checker", "feature_extractor", "inverse_scheduler")
    _scheduler_fixes = ("skip_prk_steps",)

    # -- 1. the mask ------------------------------------------------------------------------------

    def generate_mask(
        self,
        image: Any = None,
        target_prompt: Prompt | None = None,
        target_negative_prompt: Prompt | None = None,
        target_prompt_embeds: torch.Tensor | None = None,
        target_negative_prompt_embeds: torch.Tensor | None = None,
        source_prompt: Prompt | None = None,
        source_negative_prompt: Prompt | None = None,
        source_prompt_embeds: torch.Tensor | None = None,
        source_negative_prompt_embeds: torch.Tensor | None = None,
        num_maps_per_mask: int = 10,
        mask_encode_strength: float = 0.5,
        mask_thresholding_ratio: float = 3.0,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        generator: Generator = None,
        output_type: str = "np",
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> Any:
        """The edit mask: 1 where ``target_prompt`` changes the noise prediction for ``image`` most.

        ``image`` is encoded, noised to ``mask_encode_strength`` (``num_maps_per_mask`` noise draws),
        and the guided noise predictions under the source and target prompts are compared; their
        absolute difference, averaged over draws and channels, is clipped at ``mask_thresholding_ratio``
        times its mean, rescaled to ``[0, 1]`` and binarised at 0.5.

        Returns ``(batch, h, w)`` at latent size: int64 ``np.ndarray`` (``"np"``), tensor (``"pt"``), or
        a list of ``"L"`` PIL images (``"pil"``).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        name = type(self).__name__
        batch = self.check_inputs(
            Inputs(
                prompt=target_prompt,
                negative_prompt=target_negative_prompt,
                prompt_embeds=target_prompt_embeds,
                negative_prompt_embeds=target_negative_prompt_embeds,
                image=image,
                needs_image=True,
                strength=mask_encode_strength,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generator,
                output_type="np",
            )
        )
        self.check_inputs(
            Inputs(
                prompt=source_prompt,
                negative_prompt=source_negative_prompt,
                prompt_embeds=source_prompt_embeds,
                negative_prompt_embeds=source_negative_prompt_embeds,
                guidance_scale=guidance_scale,
            )
        )
        if isinstance(num_maps_per_mask, bool) or not isinstance(num_maps_per_mask, int) or num_maps_per_mask <= 0:
            raise ValueError(f"{name}: num_maps_per_mask must be a positive int, got {num_maps_per_mask!r}")
        if not isinstance(mask_thresholding_ratio, numbers.Real) or mask_thresholding_ratio <= 0:
            raise ValueError(f"{name}: mask_thresholding_ratio must be positive, got {mask_thresholding_ratio!r}")
        if output_type not in ("np", "pt", "pil"):
            raise ValueError(f"{name}: generate_mask output_type must be 'np', 'pt' or 'pil', got {output_type!r}")
        self._cross_attention_kwargs = cross_attention_kwargs
        guidance = self.uses_guidance(guidance_scale)
        encode = dict(num_images_per_prompt=num_maps_per_mask, guidance=guidance)
        target = self.encode_prompt(
            target_prompt,
            negative_prompt=target_negative_prompt,
            prompt_embeds=target_prompt_embeds,
            negative_prompt_embeds=target_negative_prompt_embeds,
            **encode,
        )
        source = self.encode_prompt(
            source_prompt,
            negative_prompt=source_negative_prompt,
            prompt_embeds=source_prompt_embeds,
            negative_prompt_embeds=source_negative_prompt_embeds,
            **encode,
        )
        pixels = self.image_input(image).repeat_interleave(num_maps_per_mask, dim=0)
        steps = self.schedule(num_inference_steps, strength=mask_encode_strength)
        t = steps[0]
        latents = self.image_latents_of(pixels, batch * num_maps_per_mask, generator)
        noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=latents.dtype)
        latents = self.scheduler.add_noise(latents, noise, t)
        model_input = self.scheduler.scale_model_input(torch.cat([latents] * (4 if guidance else 2)), t)
        embeds = torch.cat([source.for_unet(), target.for_unet()])
        pred = self.unet(model_input, t, encoder_hidden_states=embeds, cross_attention_kwargs=cross_attention_kwargs)
        pred = pred.sample
        if guidance:
            neg_src, src, neg_tgt, tgt = pred.chunk(4)
            src = neg_src + guidance_scale * (src - neg_src)
            tgt = neg_tgt + guidance_scale * (tgt - neg_tgt)
        else:
            src, tgt = pred.chunk(2)
        diff = (tgt - src).abs().reshape(batch, num_maps_per_mask, *tgt.shape[-3:]).mean([1, 2])
        cap = diff.mean() * mask_thresholding_ratio
        mask = torch.where(torch.minimum(diff.clamp(min=0), cap) / cap <= 0.5, 0, 1)
        self.maybe_free_model_hooks()
        if output_type == "pt":
            return mask
        if output_type == "pil":
            return [PIL.Image.fromarray((m * 255).astype(np.uint8), mode="L") for m in mask.cpu().numpy()]
        return mask.cpu().numpy()

    # -- 2. inversion -----------------------------------------------------------------------------

    def invert(
        self,
        prompt: Prompt | None = None,
        image: Any = None,
        num_inference_steps: int = 50,
        inpaint_strength: float = 0.8,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt | None = None,
        generator: Generator = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        decode_latents: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        lambda_auto_corr: float = 20.0,
        lambda_kl: float = 20.0,
        num_reg_steps: int = 0,
        num_auto_corr_rolls: int = 5,
    ) -> Any:
        """DDIM-invert ``image`` under ``prompt`` up to ``inpaint_strength``, keeping every step's latents.

        :param num_reg_steps: regularisation rounds per step (0: none); each moves the noise prediction down
            the gradients of :func:`auto_corr_loss` (weight ``lambda_auto_corr``, ``num_auto_corr_rolls`` random
            shifts, drawn from ``generator``) and :func:`kl_divergence` (weight ``lambda_kl``).
        :param decode_latents: also decode every inverted latent (``output_type`` ``"pil"`` or ``"np"``).

        Returns :class:`DiffEditInversionPipelineOutput` (``latents`` ``(batch, steps, C, h, w)``, the
        first the noisiest; what ``__call__`` takes as ``image_latents``) or ``(latents, images)``.

        :raises TypeError | ValueError: for bad input (no ``image``, no ``inverse_scheduler`` ...), before any
            model runs.
        """
        batch = self.check_inputs(
            Inputs(
                prompt=prompt,
                negative_prompt=negative_prompt,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                image=image,
                needs_image=True,
                strength=inpaint_strength,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generator,
                output_type="np" if output_type == "latent" else output_type,
            )
        )
        latents, embeds, opts = self.inversion_start(locals(), batch)
        inverse = self.inverse_scheduler
        inverse.set_timesteps(num_inference_steps, device=self.device)
        keep = min(int(num_inference_steps * inpaint_strength), num_inference_steps)
        start = max(num_inference_steps - keep, 0)
        steps = inverse.timesteps if start == 0 else inverse.timesteps[:-start]
        kept = self.run_inversion(
            latents, embeds, opts, steps, num_reg_steps, lambda_auto_corr, lambda_kl, num_auto_corr_rolls, generator
        )
        stacked = torch.stack(list(reversed(kept)), 1)
        images = None
        if decode_latents:
            decoded = self.decode(stacked.flatten(0, 1))
            images = self.finish(decoded, "pil" if output_type == "pil" else "np")
        self.maybe_free_model_hooks()
        if not return_dict:
            return stacked, images
        return DiffEditInversionPipelineOutput(latents=stacked, images=images)

    # -- 3. the edit ------------------------------------------------------------------------------

    def __call__(
        self,
        prompt: Prompt | None = None,
        mask_image: Any = None,
        image_latents: Any = None,
        inpaint_strength: float = 0.8,
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
        callback: LegacyCallback | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Edit the inverted image toward ``prompt`` inside ``mask_image``.

        :param mask_image: the edit region at latent size (``generate_mask``'s output; PIL, array or
            tensor with values in ``[0, 1]``, binarised at 0.5), one or one per prompt.
        :param image_latents: ``invert``'s latents ``(batch, steps, C, h, w)`` (or a list of them, or
            ``(batch * steps, C, h, w)``); the steps must be those this call runs.
        :param inpaint_strength: the part of the schedule that runs (as ``invert``'s).
        :param latents: accepted for Diffusers' signature; the run starts from ``image_latents``.

        Returns ``StableDiffusionPipelineOutput`` (or ``(images, nsfw flags)``).

        :raises TypeError | ValueError: for bad input (a missing mask or latents, shapes that do not match the
            prompts, the mask or the schedule), before any model runs.
        """
        name = type(self).__name__
        batch = self.check_inputs(Inputs.of(locals(), strength=inpaint_strength, mask_image=None, latents=None))
        if mask_image is None:
            raise ValueError(f"{name}: pass mask_image (generate_mask() computes it from text prompts)")
        if image_latents is None:
            raise ValueError(f"{name}: pass image_latents (invert() computes them from the input image)")
        mask = preprocess_mask(mask_image, batch)
        opts = self.sampling_of(locals())
        steps = self.schedule(num_inference_steps, strength=inpaint_strength)
        known = self.inverted_latents(image_latents, batch, len(steps), mask.shape[-2:], num_images_per_prompt)
        embeds = self.prompt_of(locals(), opts)
        mask = torch.cat([mask] * num_images_per_prompt).to(device=self.device, dtype=embeds.embeds.dtype)
        known = known.to(device=self.device, dtype=embeds.embeds.dtype)
        run = self.run(steps, embeds, opts, batch * num_images_per_prompt)
        run.extra["mask"] = mask
        run.blend = lambda i, current, keep: current * keep + known[i] * (1 - keep)
        latents = self.denoise(known[0].clone(), run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)

    def inverted_latents(self, image_latents: Any, batch: int, steps: int, size: Any, per_prompt: int) -> torch.Tensor:
        """``image_latents`` as ``(steps, batch * per_prompt, C, h, w)``, after checking their shape."""
        name = type(self).__name__
        if (
            isinstance(image_latents, list)
            and image_latents
            and all(isinstance(x, torch.Tensor) for x in image_latents)
        ):
            latents = torch.cat(image_latents).detach()
        elif isinstance(image_latents, torch.Tensor):
            latents = image_latents.detach()
        else:
            raise TypeError(f"{name}: image_latents must be invert()'s latents (a tensor or a list of tensors)")
        shape = (int(self.vae.config.latent_channels), int(size[0]), int(size[1]))
        if tuple(latents.shape[-3:]) != shape:
            raise ValueError(
                f"{name}: each latent in image_latents must have shape {shape}, not {tuple(latents.shape[-3:])}"
            )
        if latents.ndim == 4:
            if latents.shape[0] != batch * steps:
                raise ValueError(
                    f"{name}: image_latents holds {latents.shape[0]} latents; expected {batch} prompts x {steps} steps"
                )
            latents = latents.reshape(batch, steps, *shape)
        if tuple(latents.shape[:2]) != (batch, steps):
            raise ValueError(
                f"{name}: image_latents must have batch {batch} with latents from {steps} steps, not "
                f"batch {latents.shape[0]} with {latents.shape[1]} steps"
            )
        return latents.transpose(0, 1).repeat_interleave(per_prompt, dim=1)
