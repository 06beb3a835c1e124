"""Attend-and-Excite (Chefer, Alaluf, Vinker, Wolf and Cohen-Or, *Attend-and-Excite: Attention-Based
Semantic Guidance for Text-to-Image Diffusion Models*, SIGGRAPH 2023, arXiv:2301.13826) on the SD base.

Before each of the first ``max_iter_to_alter`` steps the latents take a gradient step that raises
the weakest of the chosen tokens' (smoothed) cross-attention maxima (Alg. 1, eq. 1-2), with
iterative refinement at the threshold steps. The cross-attention modules compute their weights
explicitly only in those gradient passes; the denoising UNet calls keep the fused kernel.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux_models.layers.attention import Attention, AttentionEditProcessor, edit_attention
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.prompts import Prompt

from ._filters import smooth_3x3
from ._sd import GuidedStableDiffusion

__all__ = ["AttentionMaps", "CrossAttentionMaps", "StableDiffusionAttendAndExcitePipeline"]

logger = logging.getLogger("difflux")

Generator = torch.Generator | Sequence[torch.Generator] | None

#: where in the UNet a module sits, in the order Attend-and-Excite averages the maps
_PLACES = ("up", "down", "mid")


class AttentionMaps:
    """The cross-attention weights of the last UNet pass run with gradients, at one resolution ``res``,
    by place in the UNet (``"down"``, ``"mid"``, ``"up"``)."""

    def __init__(self, res: tuple[int, int]) -> None:
        self.res = res
        self.maps: dict[str, list[torch.Tensor]] = {p: [] for p in _PLACES}

    def clear(self) -> None:
        for place in _PLACES:
            self.maps[place] = []

    def average(self) -> torch.Tensor:
        """The recorded maps averaged over modules, samples and heads: ``(res0, res1, tokens)``."""
        parts = [m.reshape(-1, self.res[0], self.res[1], m.shape[-1]) for p in _PLACES for m in self.maps[p]]
        if not parts:
            raise RuntimeError("Attend-and-Excite: no cross-attention map was recorded at attn_res")
        stacked = torch.cat(parts, dim=0)
        return stacked.sum(0) / stacked.shape[0]


class CrossAttentionMaps(AttentionEditProcessor):
    """Records one cross-attention module's weights into an :class:`AttentionMaps` under ``place``.

    Only in passes run under ``torch.enable_grad()``, and only when the module's query count is
    ``res[0] * res[1]``: the weights ``(batch, heads, res0 * res1, tokens)`` are appended. Passes
    without gradients keep the fused kernel and record nothing.
    """

    def __init__(self, store: AttentionMaps, place: str) -> None:
        self.store = store
        self.place = place

    def wants_probs(self, attn: Attention, cross: bool) -> bool:
        return cross and torch.is_grad_enabled()

    def edit_probs(self, attn: Attention, probs: torch.Tensor, cross: bool) -> torch.Tensor:
        res = self.store.res
        if probs.shape[-2] == res[0] * res[1]:
            self.store.maps[self.place].append(probs)
        return probs


def _place(name: str) -> str | None:
    for prefix, place in (("down_blocks", "down"), ("mid_block", "mid"), ("up_blocks", "up")):
        if name.startswith(prefix):
            return place
    return None


class StableDiffusionAttendAndExcitePipeline(GuidedStableDiffusion):
    """Text-to-image with Stable Diffusion 1.x / 2.x and Attend-and-Excite."""

    def get_indices(self, prompt: str) -> dict[int, str]:
        """The tokens of ``prompt`` by position (``{0: '<|startoftext|>', 1: 'a</w>', ...}``), for token_indices."""
        ids = self.tokenizer(prompt).input_ids
        return dict(enumerate(self.tokenizer.convert_ids_to_tokens(ids)))

    def __call__(
        self,
        prompt: Prompt | None = None,
        token_indices: Sequence[int] | Sequence[Sequence[int]] | None = None,
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
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        max_iter_to_alter: int = 25,
        thresholds: Mapping[int, float] | None = None,
        scale_factor: float = 20,
        attn_res: tuple[int, int] | None = (16, 16),
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt`` in which every token of ``token_indices`` shows up.

        :param token_indices: the prompt's token positions to excite (``get_indices`` lists them; 1 is
            the first word), one list for all prompts or one list per prompt.
        :param max_iter_to_alter: the number of first steps whose latents are updated (25).
        :param thresholds: ``{step: threshold}``: at these steps the latents are refined until every
            token's attention maximum reaches the threshold (at most 20 tries); default
            ``{0: 0.05, 10: 0.5, 20: 0.8}``.
        :param scale_factor: the update step size at the first step; it decays with
            ``sqrt(linspace(1, 0.5, steps))``.
        :param attn_res: the resolution ``(h, w)`` of the cross-attention maps that are read; default
            ``(16, 16)``; ``None``: ``(ceil(width / 32), ceil(height / 32))``. Some cross-attention
            block of the UNet must work at ``h * w`` positions.

        The other arguments are :class:`~difflux_stable_diffusion.StableDiffusionPipeline`'s. Returns
        ``StableDiffusionPipelineOutput`` (or ``(images, nsfw flags)``).

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        batch = self.check_inputs(Inputs.of(locals()))
        height, width = self.default_size(height, width)
        thresholds = {0: 0.05, 10: 0.5, 20: 0.8} if thresholds is None else thresholds
        indices = self.check_excite(token_indices, batch, prompt_embeds, max_iter_to_alter, thresholds, scale_factor)
        if attn_res is None:
            attn_res = (math.ceil(width / 32), math.ceil(height / 32))
        self.check_attn_res(attn_res, height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling_of(locals())
        embeds = self.prompt_of(locals(), opts)
        steps = self.schedule(num_inference_steps)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        run = self.run(steps, embeds, opts, total)
        per_image = [ind for ind in indices for _ in range(num_images_per_prompt)]
        maps = AttentionMaps((int(attn_res[0]), int(attn_res[1])))
        step_sizes = scale_factor * np.sqrt(np.linspace(1.0, 0.5, len(steps)))

        def choose(name: str, module: Attention) -> CrossAttentionMaps | None:
            place = _place(name)
            if place is None or not module.is_cross_attention:
                return None
            return CrossAttentionMaps(maps, place)

        def before(i: int, t: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
            if i >= max_iter_to_alter and i not in thresholds:
                return current  # nothing would change this step's latents
            updated = []
            with torch.enable_grad():
                for latent, index, text in zip(current, per_image, embeds.embeds):
                    latent = self.excite(
                        latent[None], index, text[None], t, i, maps, float(step_sizes[i]), thresholds, max_iter_to_alter
                    )
                    updated.append(latent)
            return torch.cat(updated).detach()

        run.before = before
        with edit_attention(self.unet, choose):
            latents = self.denoise(latents, run, embeds.negative)
        return self.output(latents, output_type, return_dict, generator)

    # -- the method ---------------------------------------------------------------------------

    def token_maxima(self, maps: AttentionMaps, indices: Sequence[int]) -> list[torch.Tensor]:
        """The smoothed attention maximum of each token (eq. 1): softmax over the prompt tokens
        (start and last position dropped) of 100 x the averaged maps, Gaussian-smoothed (3x3)."""
        text = torch.softmax(maps.average()[:, :, 1:-1] * 100, dim=-1)
        return [smooth_3x3(text[:, :, i - 1]).max() for i in indices]

    @staticmethod
    def loss(maxima: Sequence[torch.Tensor]) -> torch.Tensor:
        """``max_i (1 - max attention of token i)``, clipped at 0 (eq. 2)."""
        return torch.clamp(1.0 - torch.stack(list(maxima)), min=0.0).max()

    def attention_loss(
        self,
        latent: torch.Tensor,
        text: torch.Tensor,
        t: torch.Tensor,
        maps: AttentionMaps,
        indices: Sequence[int],
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Run the UNet on ``latent`` ``(1, C, h, w)`` with gradients and return the loss of its maps."""
        maps.clear()
        # torch.autograd.grad below leaves the parameters' .grad untouched: no zero_grad needed
        self.unet(latent, t, encoder_hidden_states=text, cross_attention_kwargs=cross_attention_kwargs)
        return self.loss(self.token_maxima(maps, indices))

    @staticmethod
    def update(latent: torch.Tensor, loss: torch.Tensor, step_size: float) -> torch.Tensor:
        """One gradient step on the latents: ``z - step_size * dL/dz`` (Alg. 1, line 9)."""
        grad = torch.autograd.grad(loss.requires_grad_(True), [latent], retain_graph=True)[0]
        return latent - step_size * grad

    def excite(
        self,
        latent: torch.Tensor,
        indices: Sequence[int],
        text: torch.Tensor,
        t: torch.Tensor,
        i: int,
        maps: AttentionMaps,
        step_size: float,
        thresholds: Mapping[int, float],
        max_iter_to_alter: int,
    ) -> torch.Tensor:
        """One sample's latents after step ``i``'s Attend-and-Excite update (and refinement at a threshold step)."""
        latent = latent.clone().detach().requires_grad_(True)
        loss = self.attention_loss(latent, text, t, maps, indices, self._cross_attention_kwargs)
        if i in thresholds and loss > 1.0 - thresholds[i]:
            latent, loss = self.refine(latent, indices, loss, thresholds[i], text, step_size, t, maps)
        if i < max_iter_to_alter:
            if loss != 0:
                latent = self.update(latent, loss, step_size)
            logger.info("Attend-and-Excite step %d: loss %.4f", i, float(loss.detach()))
        return latent

    def refine(
        self,
        latent: torch.Tensor,
        indices: Sequence[int],
        loss: torch.Tensor,
        threshold: float,
        text: torch.Tensor,
        step_size: float,
        t: torch.Tensor,
        maps: AttentionMaps,
        max_refinement_steps: int = 20,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Iterative refinement (Alg. 1, lines 5-8): update until every token's maximum reaches ``threshold``."""
        target = max(0.0, 1.0 - threshold)
        tries = 0
        while loss > target:
            tries += 1
            latent = latent.clone().detach().requires_grad_(True)
            loss = self.attention_loss(latent, text, t, maps, indices)
            if loss != 0:
                latent = self.update(latent, loss, step_size)
            if tries >= max_refinement_steps:
                logger.info("Attend-and-Excite: refinement stopped after %d tries", tries)
                break
        latent = latent.clone().detach().requires_grad_(True)
        return latent, self.attention_loss(latent, text, t, maps, indices)

    # -- checks --------------------------------------------------------------------------------

    def check_excite(
        self,
        token_indices: Any,
        batch: int,
        prompt_embeds: torch.Tensor | None,
        max_iter_to_alter: Any,
        thresholds: Any,
        scale_factor: Any,
    ) -> list[list[int]]:
        """``token_indices`` as one list per prompt, after checking them and the other method options."""
        name = type(self).__name__
        if token_indices is None:
            raise ValueError(f"{name}: pass token_indices, the prompt token positions to excite (see get_indices)")
        if not isinstance(token_indices, Sequence) or isinstance(token_indices, str) or not token_indices:
            raise TypeError(f"{name}: token_indices must be a list of ints or a list of lists of ints")
        nested = [list(x) for x in token_indices] if isinstance(token_indices[0], Sequence) else [list(token_indices)]
        seq = prompt_embeds.shape[1] if prompt_embeds is not None else int(self.tokenizer.model_max_length)
        for row in nested:
            if not row or not all(isinstance(x, int) and not isinstance(x, bool) for x in row):
                raise TypeError(f"{name}: token_indices must be a list of ints or a list of lists of ints")
            bad = [x for x in row if not 1 <= x <= seq - 2]
            if bad:
                raise ValueError(f"{name}: token_indices {bad} are outside 1..{seq - 2} (0 is the start token)")
        if len(nested) != batch:
            raise ValueError(f"{name}: token_indices has {len(nested)} lists for {batch} prompts; pass one per prompt")
        if isinstance(max_iter_to_alter, bool) or not isinstance(max_iter_to_alter, int) or max_iter_to_alter < 0:
            raise ValueError(f"{name}: max_iter_to_alter must be an int >= 0, got {max_iter_to_alter!r}")
        if not isinstance(thresholds, Mapping) or not all(
            isinstance(k, int) and isinstance(v, numbers.Real) for k, v in thresholds.items()
        ):
            raise TypeError(f"{name}: thresholds must map step indices (int) to thresholds (float)")
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, numbers.Real):
            raise TypeError(f"{name}: scale_factor must be a number, got {type(scale_factor).__name__}")
        return nested

    def check_attn_res(self, attn_res: Any, height: int, width: int) -> None:
        """Some cross-attention block must see ``attn_res[0] * attn_res[1]`` positions at this image size."""
        name = type(self).__name__
        if (
            not isinstance(attn_res, Sequence)
            or len(attn_res) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in attn_res)
        ):
            raise ValueError(f"{name}: attn_res must be two positive ints (h, w), got {attn_res!r}")
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        config = self.unet.config
        sizes = set()
        down, up = list(config.down_block_types), list(config.up_block_types)
        for level in range(len(down)):
            crossing = "CrossAttn" in down[level] or "CrossAttn" in up[len(up) - 1 - level]
            if level == len(down) - 1:
                crossing = crossing or "CrossAttn" in str(config.get("mid_block_type") or "UNetMidBlock2DCrossAttn")
            if crossing:
                sizes.add(h * w)
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if attn_res[0] * attn_res[1] not in sizes:
            raise ValueError(
                f"{name}: no cross-attention block of this UNet works at attn_res={tuple(attn_res)} for "
                f"{height}x{width} images (they see {sorted(sizes)} positions); pick an attn_res with one of "
                "those products"
            )
