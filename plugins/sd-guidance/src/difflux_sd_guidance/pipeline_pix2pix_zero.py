"""Pix2Pix Zero (Parmar, Singh, Zhang, Li, Lu and Zhu, *Zero-shot Image-to-Image Translation*,
SIGGRAPH 2023, arXiv:2302.03027) on the SD base.

``invert`` DDIM-inverts an image with the noise regularisers (sec. 3.1). ``__call__`` first denoises
the prompt as it is and records every cross-attention map per step (the reference); then it
denoises again from the same start with the prompt embedding moved along the edit direction
``mean(target) - mean(source)``, and before each step moves the latents down the gradient of the
squared distance between the cross-attention maps and the reference ones (cross-attention
guidance, sec. 3.2). Only the cross-attention modules form their weights, and only in the
reference run and the gradient passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from difflux.outputs import BaseOutput
from difflux.pipeline_utils import LegacyCallback
from difflux.protocols import Scheduler
from difflux_models.layers.attention import Attention, AttentionEditProcessor, edit_attention
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.prompts import Prompt

from ._inversion import InvertingStableDiffusion

__all__ = ["Pix2PixInversionPipelineOutput", "StableDiffusionPix2PixZeroPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclasses.dataclass
class Pix2PixInversionPipelineOutput(BaseOutput):
    """``latents``: the inverted latents ``(batch, C, h, w)``; ``images``: their decoding."""

    latents: torch.Tensor
    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class ReferenceMaps(AttentionEditProcessor):
    """One cross-attention module's part in cross-attention guidance.

    ``mode`` (shared by all modules through :attr:`state`): ``"record"`` keeps the weights of each
    step (by ``state["step"]``); ``"loss"`` adds ``sum over (query, key) of (weights - recorded)^2``,
    averaged over samples and heads, to ``state["loss"]``; ``"off"`` keeps the fused kernel.
    """

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.maps: dict[int, torch.Tensor] = {}

    def wants_probs(self, attn: Attention, cross: bool) -> bool:
        return cross and self.state["mode"] != "off"

    def edit_probs(self, attn: Attention, probs: torch.Tensor, cross: bool) -> torch.Tensor:
        step = self.state["step"]
        if self.state["mode"] == "record":
            self.maps[step] = probs.detach()
        else:
            reference = self.maps.pop(step)
            self.state["loss"] = self.state["loss"] + ((probs - reference) ** 2).sum((-2, -1)).mean()
        return probs


class StableDiffusionPix2PixZeroPipeline(InvertingStableDiffusion):
    """Image editing along a text direction with Stable Diffusion and cross-attention guidance."""

    _optional_components = (
        "safety_checker",
        "feature_extractor",
        "caption_generator",
        "caption_processor",
        "inverse_scheduler",
    )
    caption_generator: Any
    caption_processor: Any

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Scheduler,
        feature_extractor: Any = None,
        safety_checker: Any = None,
        inverse_scheduler: Any = None,
        caption_generator: Any = None,
        caption_processor: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__(
            vae,
            text_encoder,
            tokenizer,
            unet,
            scheduler,
            safety_checker,
            feature_extractor,
            inverse_scheduler,
            requires_safety_checker,
        )
        self.register_modules(caption_generator=caption_generator, caption_processor=caption_processor)

    # -- helpers users call ------------------------------------------------------------------------

    def generate_caption(self, images: Any) -> str:
        """A caption of ``images`` by the BLIP ``caption_generator`` (prefix ``"a photography of"``).

        :raises ValueError: without ``caption_generator`` / ``caption_processor``.
        """
        if self.caption_generator is None or self.caption_processor is None:
            raise ValueError(
                f"{type(self).__name__}.generate_caption needs caption_generator and caption_processor "
                "(transformers' BlipForConditionalGeneration and BlipProcessor)"
            )
        inputs = self.caption_processor(images, "a photography of", return_tensors="pt")
        inputs = inputs.to(device=self.device, dtype=self.caption_generator.dtype)
        outputs = self.caption_generator.generate(**inputs, max_new_tokens=128)
        return str(self.caption_processor.batch_decode(outputs, skip_special_tokens=True)[0])

    def construct_direction(self, embs_source: torch.Tensor, embs_target: torch.Tensor) -> torch.Tensor:
        """The edit direction ``mean(target) - mean(source)`` over the first axis, ``(1, seq, dim)``."""
        return (embs_target.mean(0) - embs_source.mean(0)).unsqueeze(0)

    def get_embeds(self, prompt: list[str], batch_size: int = 16) -> torch.Tensor:
        """The mean text-encoder states of many sentences, ``(1, seq, dim)`` (``source_embeds`` / ``target_embeds``)."""
        parts = []
        for i in range(0, len(prompt), batch_size):
            ids = self.tokenizer(
                prompt[i : i + batch_size],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            parts.append(self.text_encoder(ids.to(self.text_encoder.device))[0])
        return torch.cat(parts).mean(0)[None]

    # -- inversion ---------------------------------------------------------------------------------

    def invert(
        self,
        prompt: Prompt | None = None,
        image: Any = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        cross_attention_guidance_amount: float = 0.1,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        lambda_auto_corr: float = 20.0,
        lambda_kl: float = 20.0,
        num_reg_steps: int = 5,
        num_auto_corr_rolls: int = 5,
    ) -> Any:
        """DDIM-invert ``image`` (a caption of it as ``prompt``) over the whole schedule, regularising the
        noise predictions (``num_reg_steps`` rounds of the auto-correlation and KL gradients).

        Returns :class:`Pix2PixInversionPipelineOutput` (``latents`` ``(batch, C, h, w)``: ``__call__``'s
        ``latents``; ``images``: their decoding as ``output_type``) or ``(latents, images)``.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        batch = self.check_inputs(
            Inputs(
                prompt=prompt,
                prompt_embeds=prompt_embeds,
                image=image,
                needs_image=True,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                generator=generator,
                output_type=output_type,
            )
        )
        start, embeds, opts = self.inversion_start(locals(), batch)
        self.inverse_scheduler.set_timesteps(num_inference_steps, device=self.device)
        kept = self.run_inversion(
            start,
            embeds,
            opts,
            self.inverse_scheduler.timesteps,
            num_reg_steps,
            lambda_auto_corr,
            lambda_kl,
            num_auto_corr_rolls,
            generator,
        )
        inverted = kept[-1]
        images = self.finish(self.decode(inverted), output_type) if output_type != "latent" else inverted
        self.maybe_free_model_hooks()
        if not return_dict:
            return inverted, images
        return Pix2PixInversionPipelineOutput(latents=inverted, images=images)

    # -- the edit ----------------------------------------------------------------------------------

    def __call__(
        self,
        prompt: Prompt | None = None,
        source_embeds: torch.Tensor | None = None,
        target_embeds: torch.Tensor | None = None,
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
        cross_attention_guidance_amount: float = 0.1,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
    ) -> Any:
        """Edit along ``target_embeds - source_embeds`` while keeping the cross-attention maps of ``prompt``.

        :param source_embeds: / :param target_embeds: text-encoder states ``(n, seq, dim)`` of sentences about
            the source and the target concept (``get_embeds``); the direction is the difference of their means.
        :param latents: where both runs start (``invert``'s latents to edit an image).
        :param cross_attention_guidance_amount: the step size of the gradient step on the latents (0.1).

        The other arguments are :class:`~difflux_stable_diffusion.StableDiffusionPipeline`'s; the
        deprecated ``callback`` is called in the reference run, as in Diffusers.

        :raises TypeError | ValueError: for bad input (no ``source_embeds`` / ``target_embeds``, shapes that do
            not match the prompt embeddings ...), before any model runs.
        """
        name = type(self).__name__
        batch = self.check_inputs(Inputs.of(locals()))
        if source_embeds is None or target_embeds is None:
            raise ValueError(f"{name}: pass source_embeds and target_embeds (get_embeds of sentences about each)")
        height, width = self.default_size(height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(locals())
        embeds = self.prompt_of(locals(), opts)
        unet_embeds = embeds.for_unet()
        direction = self.construct_direction(source_embeds, target_embeds).to(unet_embeds)
        if direction.shape[1:] != unet_embeds.shape[1:]:
            raise ValueError(
                f"{name}: source_embeds / target_embeds have states {tuple(direction.shape[1:])}, the prompt "
                f"{tuple(unet_embeds.shape[1:])}; encode them with this pipeline's text encoder (get_embeds)"
            )
        steps = self.schedule(num_inference_steps)
        start = self.prepare_latents(self.latent_shape(total, height, width), unet_embeds.dtype, generator, latents)
        state: dict[str, Any] = {"mode": "record", "step": 0, "loss": 0.0}

        def choose(name: str, module: Attention) -> ReferenceMaps | None:
            return ReferenceMaps(state) if module.is_cross_attention and ".attn2" in f".{name}" else None

        with edit_attention(self.unet, choose):
            reference = self.run(steps, embeds, opts, total)
            reference.before = lambda i, t, x: state.update(step=i) or x
            self.denoise(start.clone(), reference, embeds.negative)
            edited = unet_embeds.clone()
            edited[1:2] += direction  # the conditional half of the first prompt, as Diffusers does
            steps = self.schedule(num_inference_steps)
            plain = self.sampling(guidance_scale, 0.0, eta, generator, cross_attention_kwargs)
            run = self.run(steps, embeds, plain, total)
            run.embeds = edited
            moved: dict[str, torch.Tensor] = {}

            def guide_latents(i: int, t: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
                model_input = torch.cat([current] * 2) if plain.guidance else current
                x = self.scheduler.scale_model_input(model_input, t).detach().clone().requires_grad_(True)
                state.update(mode="loss", step=i, loss=0.0)
                with torch.enable_grad():
                    self.unet(x, t, encoder_hidden_states=edited.detach())
                    grad = torch.autograd.grad(state["loss"], x)[0]
                state.update(mode="off")
                moved["x"] = (x - cross_attention_guidance_amount * grad).detach()
                return moved["x"].chunk(2)[0] if plain.guidance else moved["x"]

            def predict(i: int, t: torch.Tensor, model_input: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
                out: torch.Tensor = self.unet(moved["x"], t, encoder_hidden_states=text).sample
                return out

            run.before, run.predict = guide_latents, predict
            latents = self.denoise(start, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)
