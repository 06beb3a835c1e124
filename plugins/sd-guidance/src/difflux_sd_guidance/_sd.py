"""What the guidance pipelines share on top of the SD base: the components, and the run set-up (loop options
and prompt embeddings from a call's arguments; the same steps the SD pipelines spell out, kept here until
the SD base offers them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from difflux_schedulers.sampling import predict_x0_eps_vp
from difflux_stable_diffusion._base import Sampling
from difflux_stable_diffusion.pipeline_stable_diffusion import StableDiffusionComponents
from difflux_stable_diffusion.prompts import PromptEmbeds

__all__ = ["GuidedStableDiffusion"]


class GuidedStableDiffusion(StableDiffusionComponents):
    """SD 1.x / 2.x components (``vae, text_encoder, tokenizer, unet, scheduler``, optional safety
    checker and feature extractor) with the scheduler used as given, as Diffusers' guidance pipelines do."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components: ClassVar[tuple[str, ...]] = ("safety_checker", "feature_extractor")
    _scheduler_fixes: tuple[str, ...] | None = None

    def call_sampling(self, call: Mapping[str, Any], **changes: Any) -> Sampling:
        """The loop options (:meth:`sampling`) of a pipeline call from its arguments (``locals()``):
        ``guidance_scale``, and ``eta``, ``generator``, ``cross_attention_kwargs``, ``callback_on_step_end`` /
        ``callback_on_step_end_tensor_inputs``, the deprecated ``callback`` / ``callback_steps`` and ``clip_skip``
        where the call has them; ``changes`` replace arguments (a computed ``cross_attention_kwargs``)."""
        args = {**call, **changes}
        legacy = args.get("callback")
        return self.sampling(
            args["guidance_scale"],
            0.0,
            args.get("eta", 0.0),
            args.get("generator"),
            args.get("cross_attention_kwargs"),
            args.get("callback_on_step_end"),
            args.get("callback_on_step_end_tensor_inputs", ("latents",)),
            legacy=legacy,
            legacy_steps=args.get("callback_steps") if legacy else None,
            clip_skip=args.get("clip_skip"),
        )

    def call_prompt(self, call: Mapping[str, Any], opts: Sampling) -> PromptEmbeds:
        """The prompt embeddings (:meth:`encode_prompt`) of a pipeline call from its arguments (``locals()``):
        ``prompt``, ``num_images_per_prompt``, ``negative_prompt``, ``prompt_embeds``, ``negative_prompt_embeds``
        and ``clip_skip``, guided as ``opts`` says."""
        return self.encode_prompt(
            call["prompt"],
            num_images_per_prompt=call["num_images_per_prompt"],
            guidance=opts.guidance,
            negative_prompt=call["negative_prompt"],
            prompt_embeds=call["prompt_embeds"],
            negative_prompt_embeds=call["negative_prompt_embeds"],
            clip_skip=call.get("clip_skip"),
        )

    def integer_timesteps(self, steps: torch.Tensor) -> None:
        """Refuse schedulers with fractional timesteps (the method indexes ``alphas_cumprod`` by timestep).

        :raises ValueError: naming the scheduler and ones that work.
        """
        if steps.dtype not in (torch.int16, torch.int32, torch.int64) or not hasattr(self.scheduler, "alphas_cumprod"):
            raise ValueError(
                f"{type(self).__name__} does not support {type(self.scheduler).__name__} (its timesteps are not "
                "integer indices into alphas_cumprod); use DDIMScheduler, PNDMScheduler, DDPMScheduler, "
                "DEISMultistepScheduler, UniPCMultistepScheduler or a DPM-Solver scheduler"
            )

    def x0_and_eps(self, sample: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor) -> tuple[Any, Any]:
        """``(predicted clean latents, predicted noise)`` of ``model_output`` at integer timestep ``t``
        (by the scheduler's ``prediction_type``; DDPM eq. 15)."""
        alpha = self.scheduler.alphas_cumprod[t].to(sample.device)
        return predict_x0_eps_vp(model_output, sample, alpha, self.scheduler.config.prediction_type)
