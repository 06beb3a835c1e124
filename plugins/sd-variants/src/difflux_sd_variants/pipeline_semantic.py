"""SEGA: semantic guidance, steering Stable Diffusion towards or away from editing concepts.

Brack et al., *SEGA: Instructing Text-to-Image Models using Semantic Guidance* (NeurIPS 2023,
arXiv:2301.12247), eq. 3-6. Each editing concept adds one UNet batch per step; its guidance
``s_e (eps_concept - eps_uncond)`` (negated for a reversed direction) keeps only its largest
``1 - edit_threshold`` fraction of values per channel, is weighted across concepts, and is
added to classifier-free guidance between the warm-up and cool-down steps, with momentum.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux_stable_diffusion._base import Denoise
from difflux_stable_diffusion._common import StableDiffusionPipelineOutput
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.prompts import Prompt, prompt_list

from ._sd import SDComponentsNoImageEncoder

__all__ = ["SemanticStableDiffusionPipeline", "SemanticStableDiffusionPipelineOutput"]

Generator = torch.Generator | Sequence[torch.Generator] | None
PerConcept = Any  # a value, or a list with one value per editing concept


@dataclasses.dataclass
class SemanticStableDiffusionPipelineOutput(StableDiffusionPipelineOutput):
    """Images and safety flags of :class:`SemanticStableDiffusionPipeline`."""


@dataclasses.dataclass
class _Concept:
    scale: float
    threshold: float
    reverse: bool
    weight: float
    warmup: int
    cooldown: int | None


def _per_concept(value: PerConcept, count: int, name: str, pipeline: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{pipeline}: {name} has {len(value)} entries for {count} editing concepts; pass one each")
        return list(value)
    return [value] * count


def _number(value: Any, name: str, pipeline: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{pipeline}: {name} must be a finite number, got {value!r}")
    number = float(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{pipeline}: {name} must lie in [{low}, {high}], got {value!r}")
    return number


class SemanticStableDiffusionPipeline(SDComponentsNoImageEncoder):
    """Text-to-image with Stable Diffusion 1.x / 2.x and semantic guidance (SEGA) towards / away from concepts.

    After a run, ``pipe.sem_guidance`` holds the semantic guidance of every step (``(steps + 1, B, C, h, w)``,
    CPU); pass it as ``sem_guidance`` to apply the same edit to another run.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    sem_guidance: torch.Tensor | None = None
    _concepts: list[_Concept]
    _sega_step: int = 0
    _momentum: torch.Tensor | None = None
    _momentum_scale: float = 0.1
    _momentum_beta: float = 0.4
    _given_guidance: Sequence[torch.Tensor] | None = None

    def check_editing(self, args: dict[str, Any], steps: int) -> list[_Concept]:
        """The editing concepts' settings, checked; ``[]`` without editing prompts.

        :raises ValueError | TypeError: naming the argument.
        """
        name = type(self).__name__
        prompts, embeds = args["editing_prompt"], args["editing_prompt_embeddings"]
        if prompts is not None and embeds is not None:
            raise ValueError(f"{name}: pass editing_prompt or editing_prompt_embeddings, not both")
        if embeds is not None and (not isinstance(embeds, torch.Tensor) or embeds.ndim != 3):
            raise ValueError(f"{name}: editing_prompt_embeddings must be a (concepts, tokens, features) tensor")
        count = len(prompt_list(prompts) or []) if prompts else (embeds.shape[0] if embeds is not None else 0)
        _number(args["edit_momentum_scale"], "edit_momentum_scale", name)
        _number(args["edit_mom_beta"], "edit_mom_beta", name, 0.0, 1.0)
        given = args["sem_guidance"]
        if given is not None and len(given) < steps:
            raise ValueError(f"{name}: sem_guidance has {len(given)} steps; pass one tensor per step ({steps})")
        if count == 0:
            return []
        weights = args["edit_weights"] if args["edit_weights"] else [1.0] * count
        fields = zip(
            _per_concept(args["edit_guidance_scale"], count, "edit_guidance_scale", name),
            _per_concept(args["edit_threshold"], count, "edit_threshold", name),
            _per_concept(args["reverse_editing_direction"], count, "reverse_editing_direction", name),
            _per_concept(weights, count, "edit_weights", name),
            _per_concept(args["edit_warmup_steps"], count, "edit_warmup_steps", name),
            _per_concept(args["edit_cooldown_steps"], count, "edit_cooldown_steps", name),
        )
        concepts = []
        for scale, threshold, reverse, weight, warmup, cooldown in fields:
            if not isinstance(reverse, bool):
                raise TypeError(f"{name}: reverse_editing_direction must be True / False (or a list), got {reverse!r}")
            for key, value in (("edit_warmup_steps", warmup), ("edit_cooldown_steps", cooldown)):
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                    raise ValueError(f"{name}: {key} must be an int >= 0 (or a list of them), got {value!r}")
            if warmup is None:
                raise ValueError(f"{name}: edit_warmup_steps must be an int >= 0, got None")
            concepts.append(_Concept(_number(scale, "edit_guidance_scale", name),
                                     _number(threshold, "edit_threshold", name, 0.0, 1.0), reverse,
                                     _number(weight, "edit_weights", name), warmup, cooldown))
        return concepts

    def guide(self, noise_pred: torch.Tensor, channels: int) -> torch.Tensor:
        """Classifier-free guidance plus semantic guidance (SEGA eq. 3-6) of ``[uncond, text, concept...]``."""
        i = self._sega_step
        self._sega_step += 1
        parts = noise_pred.chunk(2 + len(self._concepts))
        uncond, text, concepts = parts[0], parts[1], parts[2:]
        guidance = self._guidance_scale * (text - uncond)
        if self._momentum is None:
            self._momentum = torch.zeros_like(guidance)
        if concepts:
            guidance = guidance + self._semantic(i, uncond, guidance, concepts)
        if self._given_guidance is not None:
            guidance = guidance + self._given_guidance[i].to(guidance.device)
        return uncond + guidance

    def _semantic(
        self, i: int, uncond: torch.Tensor, guidance: torch.Tensor, concepts: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        """The semantic guidance term of step ``i`` (zero outside every concept's warm-up / cool-down window)."""
        weights = torch.zeros(len(concepts), guidance.shape[0], device=guidance.device, dtype=guidance.dtype)
        edits = torch.zeros(len(concepts), *guidance.shape, device=guidance.device, dtype=guidance.dtype)
        warm: list[int] = []
        for c, (estimate, concept) in enumerate(zip(concepts, self._concepts)):
            if i >= concept.warmup:
                warm.append(c)
            if i >= (concept.cooldown if concept.cooldown is not None else i + 1):
                continue
            edit = (estimate - uncond) * (-1 if concept.reverse else 1)
            weights[c] = concept.weight
            edit = edit * concept.scale
            magnitude = edit.abs()
            cut = torch.quantile(magnitude.flatten(start_dim=2).float(), concept.threshold, dim=2).to(edit.dtype)
            edits[c] = torch.where(magnitude >= cut[:, :, None, None], edit, torch.zeros_like(edit))
        extra = torch.zeros_like(guidance)
        if 0 < len(warm) < len(concepts):  # some concepts past warm-up: their normalised weighted edits
            index = torch.tensor(warm, device=guidance.device)
            part = weights.index_select(0, index).clamp(min=0)
            part = part / part.sum(dim=0)
            extra = torch.einsum("cb,cbijk->bijk", part, edits.index_select(0, index))
            self._record(i, extra)
        total = torch.einsum("cb,cbijk->bijk", torch.nan_to_num(weights.clamp(min=0)), edits)
        momentum = self._momentum if self._momentum is not None else torch.zeros_like(total)
        total = total + self._momentum_scale * momentum
        self._momentum = self._momentum_beta * momentum + (1 - self._momentum_beta) * total
        if len(warm) == len(concepts):
            extra = total
            self._record(i, total)
        return extra

    def _record(self, i: int, guidance: torch.Tensor) -> None:
        if self.sem_guidance is not None:
            self.sem_guidance[i] = guidance.detach().cpu()

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = 1,
        editing_prompt: Prompt | None = None,
        editing_prompt_embeddings: torch.Tensor | None = None,
        reverse_editing_direction: bool | list[bool] = False,
        edit_guidance_scale: float | list[float] = 5,
        edit_warmup_steps: int | list[int] = 10,
        edit_cooldown_steps: int | list[int] | None = None,
        edit_threshold: float | list[float] = 0.9,
        edit_momentum_scale: float = 0.1,
        edit_mom_beta: float = 0.4,
        edit_weights: list[float] | None = None,
        sem_guidance: Sequence[torch.Tensor] | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt``, edited towards (or away from) ``editing_prompt`` concepts.

        :param editing_prompt: one concept or a list (or ``editing_prompt_embeddings``, one row per concept).
        :param reverse_editing_direction: per concept, steer away from it instead.
        :param edit_guidance_scale: per concept, the scale ``s_e`` of its guidance (5).
        :param edit_warmup_steps: per concept, the steps before its guidance applies (10).
        :param edit_cooldown_steps: per concept, the step from which it stops (default: never).
        :param edit_threshold: per concept, the quantile of its guidance values dropped per channel (0.9).
        :param edit_momentum_scale: how much of the guidance momentum is added (0.1).
        :param edit_mom_beta: momentum decay (0.4).
        :param edit_weights: per-concept weights (default: equal).
        :param sem_guidance: a previous run's ``pipe.sem_guidance`` (one tensor per step) added as is.
        :returns: ``SemanticStableDiffusionPipelineOutput(images, nsfw_content_detected)`` or a tuple.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        batch = self.check_inputs(Inputs.of(locals()))
        concepts = self.check_editing(locals(), num_inference_steps)
        height, width = self.default_size(height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling(guidance_scale, 0.0, eta, generator, None, callback_on_step_end,
                             callback_on_step_end_tensor_inputs, legacy=callback,
                             legacy_steps=callback_steps if callback is not None else None)
        embeds = self.prompt_of(locals(), opts)
        unet_embeds = embeds.for_unet()
        if concepts and opts.guidance:
            if editing_prompt_embeddings is not None:
                concept_embeds = editing_prompt_embeddings.to(self.device).repeat(batch, 1, 1)
                concept_embeds = concept_embeds.repeat_interleave(num_images_per_prompt, dim=0)
            else:
                texts = [text for concept in prompt_list(editing_prompt) or [] for text in [concept] * batch]
                concept_embeds = self.encode_prompt(texts, num_images_per_prompt=num_images_per_prompt).embeds
            unet_embeds = torch.cat([unet_embeds, concept_embeds.to(unet_embeds.dtype)])
        steps = self.schedule(num_inference_steps)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        self._concepts = concepts if opts.guidance else []
        setattr(self, "_guidance_batches", 2 + len(self._concepts))  # noqa: B010  (a per-run value of a ClassVar)
        self._sega_step, self._momentum = 0, None
        self._momentum_scale, self._momentum_beta = float(edit_momentum_scale), float(edit_mom_beta)
        self._given_guidance = sem_guidance
        self.sem_guidance = torch.zeros((len(steps) + 1, *latents.shape)) if opts.guidance else None
        try:
            latents = self.denoise(latents, Denoise(steps, unet_embeds, opts), embeds.negative)
        finally:
            del self._guidance_batches
            self._concepts, self._momentum, self._given_guidance = [], None, None
        output = self.output(latents, output_type, return_dict, generator)
        if return_dict:
            return SemanticStableDiffusionPipelineOutput(images=output.images,
                                                         nsfw_content_detected=output.nsfw_content_detected)
        return output
