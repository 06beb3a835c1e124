"""The SD 1.x / 2.x component set the single-text-encoder variants share (no loop: that is the SD base's)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Denoise, Sampling, StableDiffusionBase
from difflux_stable_diffusion.prompts import PromptEmbeds, PromptEncoderMixin

__all__ = ["SDComponents"]


class SDComponents(PromptEncoderMixin, StableDiffusionBase):
    """``vae, text_encoder, tokenizer, unet, scheduler`` (+ optional safety checker, feature extractor,
    image encoder) as in Diffusers' SD 1.x / 2.x pipelines; ``encode_prompt`` from the SD plugin."""

    _optional_components: ClassVar[tuple[str, ...]] = ("safety_checker", "feature_extractor", "image_encoder")

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Scheduler,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        image_encoder: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__()
        self.warn_about_safety_checker(safety_checker, feature_extractor, requires_safety_checker)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=safety_checker,
            feature_extractor=feature_extractor,
            image_encoder=image_encoder,
        )

    def run(self, timesteps: torch.Tensor, embeds: PromptEmbeds, opts: Sampling, total: int) -> Denoise:
        """The SD loop over ``timesteps`` conditioned on ``embeds`` (and the guidance embedding of distilled UNets)."""
        cond = self.guidance_embedding(opts.guidance_scale, total, embeds.embeds.dtype)
        return Denoise(timesteps, embeds.for_unet(), opts, timestep_cond=cond)
