"""Text-to-image model editing (TIME): change what a prompt implies by editing the cross-attention projections.

Orgad, Kawar and Belinkov, *Editing Implicit Assumptions in Text-to-Image Diffusion Models*
(ICCV 2023, arXiv:2303.08084), eq. 3-5. For each cross-attention key / value projection ``W``, the
closed-form ridge solution

    W' = (lambda W + sum_i v_i k_i^T) (lambda I + sum_i k_i k_i^T)^-1

maps the source prompt's token embeddings ``k_i`` to the values ``v_i = W e_i`` the destination
prompt's aligned tokens ``e_i`` had, over the prompt and a few augmented phrasings of it. Sampling
is then Stable Diffusion's with the edited UNet.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.prompts import Prompt

from ._sd import SDComponentsNoImageEncoder

__all__ = ["AUGS_CONST", "StableDiffusionModelEditingPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None

#: the phrasings the edit is also fitted on ("A photo of a <prompt>" ...)
AUGS_CONST = ("A photo of ", "An image of ", "A picture of ")


class StableDiffusionModelEditingPipeline(SDComponentsNoImageEncoder):
    """Stable Diffusion 1.x / 2.x whose implicit assumptions ``edit_model`` changes (TIME).

    ``pipe.edit_model("A pack of roses", "A pack of blue roses")`` makes "roses" blue in later
    prompts; ``restart_params=True`` (default) starts every edit from the original weights.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

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
        with_to_k: bool = True,
        with_augs: Sequence[str] = AUGS_CONST,
    ) -> None:
        super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                         requires_safety_checker)
        self.with_to_k = bool(with_to_k)
        self.with_augs = list(with_augs)
        width = int(text_encoder.config.hidden_size) if text_encoder is not None else None
        #: the cross-attention modules that read the text (``attn2`` of every transformer block)
        self.ca_clip_layers = [
            module
            for name, module in unet.named_modules()
            if name.endswith("attn2") and width is not None and module.to_v.in_features == width
        ]
        self.og_matrices = [copy.deepcopy(layer.to_v) for layer in self.ca_clip_layers]
        if self.with_to_k:
            self.og_matrices += [copy.deepcopy(layer.to_k) for layer in self.ca_clip_layers]

    @property
    def projection_matrices(self) -> list[torch.nn.Linear]:
        """The edited projections: every cross-attention ``to_v`` (then every ``to_k`` with ``with_to_k``)."""
        values = [layer.to_v for layer in self.ca_clip_layers]
        return values + ([layer.to_k for layer in self.ca_clip_layers] if self.with_to_k else [])

    def _restart(self) -> None:
        count = len(self.ca_clip_layers)
        for k, layer in enumerate(self.ca_clip_layers):
            layer.to_v = copy.deepcopy(self.og_matrices[k])
            if self.with_to_k:
                layer.to_k = copy.deepcopy(self.og_matrices[count + k])

    def _aligned(self, old: str, new: str) -> list[int]:
        """For each of the 77 positions of ``old``'s tokens, the position in ``new`` of the same token (the tokens
        ``new`` adds are skipped; "an" counts as "a"); positions past ``old``'s end follow ``new``'s."""
        tok = self.tokenizer
        length = int(tok.model_max_length)
        a_token = tok.encode("a ")[1]
        old_ids = [a_token if tok.decode(t) == "an" else t for t in tok(old).input_ids]
        new_ids = [a_token if tok.decode(t) == "an" else t for t in tok(new).input_ids]
        positions, j = [], 0
        for token in old_ids:
            while new_ids[j] != token:
                j += 1
                if j >= len(new_ids):
                    raise ValueError(
                        f"{type(self).__name__}.edit_model: destination_prompt {new!r} must contain every token of "
                        f"source_prompt {old!r} in order (it may add words)"
                    )
            positions.append(j)
            j += 1
        positions.extend(range(j, length))
        positions.extend([length - 1] * (length - len(positions)))
        return positions[:length]

    @torch.no_grad()
    def edit_model(
        self, source_prompt: str, destination_prompt: str, lamb: float = 0.1, restart_params: bool = True
    ) -> None:
        """Edit the cross-attention projections so ``source_prompt`` acts like ``destination_prompt`` (TIME eq. 5).

        :param lamb: the ridge weight ``lambda`` keeping the projections near their current values (0.1).
        :param restart_params: start from the original projections (else edits accumulate).
        :raises ValueError | TypeError: on non-string prompts, a non-positive ``lamb``, or a destination that does
            not contain the source's tokens in order.
        """
        name = f"{type(self).__name__}.edit_model"
        for key, value in (("source_prompt", source_prompt), ("destination_prompt", destination_prompt)):
            if not isinstance(value, str) or not value:
                raise TypeError(f"{name}: {key} must be a non-empty string, got {value!r}")
        if isinstance(lamb, bool) or not isinstance(lamb, numbers.Real) or not math.isfinite(lamb) or lamb <= 0:
            raise ValueError(f"{name}: lamb must be a positive number, got {lamb!r}")
        if restart_params:
            self._restart()
        olds, news = [source_prompt], [destination_prompt]
        for texts in (olds, news):
            base = texts[0] if texts[0][:1] != "A" else "a" + texts[0][1:]
            texts.extend(aug + base for aug in self.with_augs)
        tok = self.tokenizer
        pairs = []
        for old, new in zip(olds, news):
            ids = tok([old, new], padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(self.device)
            old_emb, new_emb = self.text_encoder(ids)[0]
            pairs.append((old_emb, new_emb[self._aligned(old, new)]))
        for layer in self.projection_matrices:
            weight = layer.weight
            numerator = lamb * weight
            denominator = lamb * torch.eye(weight.shape[1], device=weight.device, dtype=weight.dtype)
            for keys, targets in pairs:
                values = layer(targets)
                numerator = numerator + values.T @ keys
                denominator = denominator + keys.T @ keys
            layer.weight = torch.nn.Parameter(numerator @ torch.inverse(denominator))

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
        """Generate images for ``prompt`` with the (edited) UNet.

        :returns: ``StableDiffusionPipelineOutput(images, nsfw_content_detected)`` or a tuple.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        batch = self.check_inputs(Inputs.of(locals()))
        height, width = self.default_size(height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling(guidance_scale, 0.0, eta, generator, cross_attention_kwargs, callback_on_step_end,
                             callback_on_step_end_tensor_inputs, legacy=callback,
                             legacy_steps=callback_steps if callback is not None else None, clip_skip=clip_skip)
        embeds = self.prompt_of(locals(), opts)
        steps = self.schedule(num_inference_steps)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        latents = self.denoise(latents, self.run(steps, embeds, opts, total), embeds.negative)
        return self.output(latents, output_type, return_dict, generator)
