"""The SD 1.x / 2.x component sets the single-text-encoder variants share (no loop: that is the SD base's)."""

from __future__ import annotations

from typing import Any, ClassVar

from difflux.protocols import Scheduler
from difflux_stable_diffusion.pipeline_stable_diffusion import StableDiffusionComponents

__all__ = ["SDComponents", "SDComponentsNoImageEncoder"]


class SDComponents(StableDiffusionComponents):
    """``vae, text_encoder, tokenizer, unet, scheduler`` (+ optional safety checker, feature extractor, image
    encoder) as in Diffusers' SD 1.x / 2.x pipelines; the scheduler is used as given (these Diffusers
    pipelines do not rewrite old scheduler configs)."""

    _scheduler_fixes: tuple[str, ...] | None = None


class SDComponentsNoImageEncoder(SDComponents):
    """The same without an ``image_encoder`` (the Diffusers pipelines that take none: ParaDiGMS, SEGA,
    CycleDiffusion, model editing)."""

    _optional_components: ClassVar[tuple[str, ...]] = ("safety_checker", "feature_extractor")

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Scheduler,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         None, requires_safety_checker)
        self.__dict__["_component_names"].remove("image_encoder")  # neither a component nor saved
