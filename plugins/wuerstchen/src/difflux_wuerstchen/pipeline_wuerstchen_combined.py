"""Würstchen in one call: the prior (stage C) and the decoder (stages B and A) sharing one folder's components."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from difflux import DiffusionPipeline
from difflux.pipeline_utils import StepCallback
from difflux_kandinsky.pipeline_kandinsky2_2_combined import ConnectedPriorMixin

from .pipeline_wuerstchen import Generator, Prompt, WuerstchenDecoderPipeline, WuerstchenPriorPipeline

__all__ = ["WuerstchenCombinedPipeline"]


class WuerstchenCombinedPipeline(ConnectedPriorMixin, DiffusionPipeline):
    """Prompt → images: :class:`~.pipeline_wuerstchen.WuerstchenPriorPipeline` then
    :class:`~.pipeline_wuerstchen.WuerstchenDecoderPipeline`.

    ``prior_pipe`` and ``decoder_pipe`` hold the same component objects as the combined pipeline, so
    its ``components`` build either stage on its own. ``from_pretrained`` also takes a decoder folder
    (``warp-ai/wuerstchen``) whose ``README.md`` metadata names its prior (``prior: [repo]``).
    """

    model_cpu_offload_seq = "prior_text_encoder->prior_prior->text_encoder->decoder->vqgan"
    _optional_components: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: Any,
        decoder: Any,
        scheduler: Any,
        vqgan: Any,
        prior_tokenizer: Any,
        prior_text_encoder: Any,
        prior_prior: Any,
        prior_scheduler: Any,
    ) -> None:
        super().__init__()
        self.register_modules(
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            decoder=decoder,
            scheduler=scheduler,
            vqgan=vqgan,
            prior_prior=prior_prior,
            prior_text_encoder=prior_text_encoder,
            prior_tokenizer=prior_tokenizer,
            prior_scheduler=prior_scheduler,
        )
        self.prior_pipe = WuerstchenPriorPipeline(
            prior=prior_prior, text_encoder=prior_text_encoder, tokenizer=prior_tokenizer, scheduler=prior_scheduler
        )
        self.decoder_pipe = WuerstchenDecoderPipeline(
            text_encoder=text_encoder, tokenizer=tokenizer, decoder=decoder, scheduler=scheduler, vqgan=vqgan
        )

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        super().set_progress_bar_config(**kwargs)
        self.prior_pipe.set_progress_bar_config(**kwargs)
        self.decoder_pipe.set_progress_bar_config(**kwargs)

    @torch.no_grad()
    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int = 512,
        width: int = 512,
        prior_num_inference_steps: int = 60,
        prior_timesteps: list[float] | None = None,
        prior_guidance_scale: float = 4.0,
        num_inference_steps: int = 12,
        decoder_timesteps: list[float] | None = None,
        decoder_guidance_scale: float = 0.0,
        negative_prompt: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        prior_callback_on_step_end: StepCallback | None = None,
        prior_callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Images for ``prompt`` (see the two stages for each argument; ``latents`` are the prior's).

        The decoder's options are checked before the prior runs.

        :raises TypeError | ValueError: for a bad argument (named), before any model runs.
        """
        decoder_prompt = prompt if prompt is not None else ""
        self.decoder_pipe.check_call(
            decoder_prompt,
            negative_prompt,
            num_inference_steps,
            decoder_timesteps,
            decoder_guidance_scale,
            num_images_per_prompt,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        embeddings = self.prior_pipe(
            prompt=prompt if prompt_embeds is None else None,
            height=height,
            width=width,
            num_inference_steps=prior_num_inference_steps,
            timesteps=prior_timesteps,
            guidance_scale=prior_guidance_scale,
            negative_prompt=negative_prompt if negative_prompt_embeds is None else None,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            latents=latents,
            output_type="pt",
            return_dict=False,
            callback_on_step_end=prior_callback_on_step_end,
            callback_on_step_end_tensor_inputs=prior_callback_on_step_end_tensor_inputs,
        )[0]
        return self.decoder_pipe(
            image_embeddings=embeddings,
            prompt=decoder_prompt,
            num_inference_steps=num_inference_steps,
            timesteps=decoder_timesteps,
            guidance_scale=decoder_guidance_scale,
            negative_prompt=negative_prompt,
            generator=generator,
            output_type=output_type,
            return_dict=return_dict,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
