"""Self-Attention Guidance (Hong, Lee, Jang and Kim, *Improving Sample Quality of Diffusion Models
Using Self-Attention Guidance*, ICCV 2023, arXiv:2210.00939) on the SD base.

Each step the mid-block self-attention map says which latent pixels the model attends to most;
those pixels of the predicted clean latents are blurred, re-noised, and run through the UNet
again; the prediction is pushed away from that degraded one (eq. 16, unconditional half: eq. 25).
Only the one mid-block self-attention module computes its weights explicitly.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux_models.layers.attention import AttentionStoreProcessor, edit_attention
from difflux_stable_diffusion._base import Denoise
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.prompts import Prompt

from ._filters import gaussian_blur_2d
from ._sd import GuidedStableDiffusion

__all__ = ["StableDiffusionSAGPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None

#: the attention module whose map SAG reads (Diffusers' choice: the first mid-block self-attention)
SAG_MODULE = "mid_block.attentions.0.transformer_blocks.0.attn1"


class StableDiffusionSAGPipeline(GuidedStableDiffusion):
    """Text-to-image with Stable Diffusion 1.x / 2.x and Self-Attention Guidance."""

    _optional_components = ("safety_checker", "feature_extractor", "image_encoder")

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        sag_scale: float = 0.75,
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
        callback_steps: int | None = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt`` with self-attention guidance.

        :param sag_scale: the SAG weight ``s`` of eq. 16 (0 turns it off; 0.75 by default, as Diffusers).
            With classifier-free guidance the unconditional half is degraded (eq. 25).

        The other arguments are :class:`~difflux_stable_diffusion.StableDiffusionPipeline`'s
        (``callback`` / ``callback_steps`` deprecated). Images ``(B, H, W, 3)`` (``"np"``), PIL, or
        ``(B, 3, H, W)`` float32 in ``[0, 1]`` (``"pt"``); ``"latent"``: ``(B, 4, H/8, W/8)``.

        :raises TypeError | ValueError: for bad input (a non-number or negative ``sag_scale``, a scheduler
            with fractional timesteps, a UNet without a mid-block attention), before any model runs.
        """
        batch = self.check_inputs(Inputs.of(locals()))
        if isinstance(sag_scale, bool) or not isinstance(sag_scale, numbers.Real) or sag_scale < 0:
            raise ValueError(f"{type(self).__name__}: sag_scale must be a number >= 0, got {sag_scale!r}")
        module = dict(self.unet.named_modules()).get(SAG_MODULE)
        if sag_scale > 0 and module is None:
            raise ValueError(
                f"{type(self).__name__}: self-attention guidance reads {SAG_MODULE!r}, which this UNet lacks "
                "(it needs a UNetMidBlock2DCrossAttn mid block); pass sag_scale=0"
            )
        height, width = self.default_size(height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(locals())
        steps = self.schedule(num_inference_steps)
        self.integer_timesteps(steps)
        embeds = self.prompt_of(locals(), opts)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        run = self.run(steps, embeds, opts, total)
        if sag_scale == 0:
            latents = self.denoise(latents, run, embeds.negative)
            return self.output(latents, output_type, return_dict, generator)
        store = AttentionStoreProcessor()
        map_size: list[torch.Size] = []
        hook = self.unet.mid_block.attentions[0].register_forward_hook(
            lambda _m, _i, out: map_size.append(out.shape[-2:]) if not map_size else None
        )
        try:
            with edit_attention(self.unet, lambda name, _m: store if name == SAG_MODULE else None):
                run.adjust = self.sag_step(run, store, map_size, float(sag_scale))
                latents = self.denoise(latents, run, embeds.negative)
        finally:
            hook.remove()
        return self.output(latents, output_type, return_dict, generator)

    def sag_step(
        self, run: Denoise, store: AttentionStoreProcessor, map_size: list[torch.Size], sag_scale: float
    ) -> Any:
        """The loop's ``adjust`` step: ``noise_pred + s * (eps - eps(degraded latents))`` (eq. 16)."""

        def adjust(
            i: int, t: torch.Tensor, latents: torch.Tensor, noise_pred: torch.Tensor, uncond: torch.Tensor | None
        ) -> torch.Tensor:
            base = noise_pred if uncond is None else uncond
            probs = store.probs
            if probs is None or not map_size:
                raise RuntimeError(f"{type(self).__name__}: the mid-block self-attention map was not recorded")
            if uncond is not None:
                probs = probs.chunk(2)[0]  # the unconditional half's map (eq. 25)
            x0, eps = self.x0_and_eps(latents, base, t)
            degraded = self.sag_masking(x0, probs, map_size[0], t, eps)
            embeds = run.embeds if uncond is None else run.embeds.chunk(2)[0]
            degraded_pred: torch.Tensor = self.unet(degraded, t, encoder_hidden_states=embeds).sample
            return noise_pred + sag_scale * (base - degraded_pred)

        return adjust

    def sag_masking(
        self, x0: torch.Tensor, probs: torch.Tensor, map_size: torch.Size, t: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """Blur ``x0`` ``(B, C, h, w)`` where the self-attention map ``probs`` ``(B, heads, N, N)`` of the
        ``map_size`` feature map is above average (summed attention received > 1), then noise it back to ``t``
        with ``eps`` (sec. 4.2: Gaussian blur, kernel 9, sigma 1)."""
        b, channels, h, w = x0.shape
        received = probs.mean(1).sum(1) > 1.0  # (B, N): pixels attended to more than the average
        mask = received.reshape(b, 1, map_size[0], map_size[1]).to(probs.dtype).repeat(1, channels, 1, 1)
        mask = F.interpolate(mask, (h, w))
        blurred = gaussian_blur_2d(x0, kernel_size=9, sigma=1.0)
        degraded = blurred * mask + x0 * (1 - mask)
        out: torch.Tensor = self.scheduler.add_noise(degraded, noise=eps, timesteps=t[None])
        return out
