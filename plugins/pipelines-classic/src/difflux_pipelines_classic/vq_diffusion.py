"""VQ-Diffusion text-to-image (Gu et al. 2022, "Vector Quantized Diffusion Model for Text-to-Image Synthesis",
arXiv:2111.14822; learned classifier-free sampling: Tang et al. 2022, "Improved Vector Quantized Diffusion
Models", arXiv:2205.16007).

A discrete transformer (``Transformer2DModel`` with ``num_vector_embeds``) predicts ``log p(x_0 | x_t)``
over VQ-VAE codes for every latent position; :class:`~difflux_schedulers.VQDiffusionScheduler`
samples the previous token grid; the VQ-VAE decodes the final codes. Generation starts from an
all-mask grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from difflux import DiffusionPipeline, ImagePipelineOutput
from difflux.image import postprocess
from difflux.modeling import ModelMixin
from difflux.pipeline_utils import (
    DenoisingState,
    LegacyCallback,
    StepCallback,
    call_legacy,
    check_batch,
    check_callback_inputs,
    check_output_type,
    check_steps,
    legacy_callback,
    step_callback,
)
from difflux_stable_diffusion.prompts import Prompt, prompt_list, repeat_per_image, tokenize
from torch import nn

__all__ = ["LearnedClassifierFreeSamplingEmbeddings", "VQDiffusionPipeline", "truncate"]

#: what ``output_type`` may be; ``"latent"`` returns the final codes ``(batch, pixels)`` int64
OUTPUT_TYPES = ("pil", "np", "pt", "latent")


class LearnedClassifierFreeSamplingEmbeddings(ModelMixin):
    """The learned "empty caption" embedding of improved VQ-Diffusion: ``embeddings`` ``(length, hidden_size)``
    replaces the encoded empty caption under classifier-free guidance when ``learnable``.

    Config keys and the state-dict key (``embeddings``) as Diffusers' class; without ``learnable`` the
    parameter is empty.

    :raises ValueError: when ``learnable`` lacks ``hidden_size`` or ``length``.
    """

    def __init__(self, learnable: bool = False, hidden_size: int | None = None, length: int | None = None) -> None:
        super().__init__()
        self.learnable = learnable
        if learnable and (hidden_size is None or length is None):
            raise ValueError(
                "LearnedClassifierFreeSamplingEmbeddings: learnable=True needs hidden_size and length "
                f"(the text encoder's width and token count), got {hidden_size} and {length}"
            )
        shape = (length, hidden_size) if learnable else (0,)
        self.embeddings = nn.Parameter(torch.zeros(shape))  # type: ignore[arg-type]


def truncate(log_p_x_0: torch.Tensor, truncation_rate: float) -> torch.Tensor:
    """Keep, per position, the most likely codes whose probabilities sum below ``truncation_rate`` (always the
    first one); the others get ``log p = -inf``. ``log_p_x_0``: ``(batch, codes, pixels)``."""
    ordered, order = log_p_x_0.sort(dim=1, descending=True)
    below = ordered.exp().cumsum(dim=1) < truncation_rate
    keep_sorted = torch.cat([torch.ones_like(below[:, :1]), below[:, :-1]], dim=1)
    keep = torch.empty_like(keep_sorted).scatter_(1, order, keep_sorted)
    return log_p_x_0.masked_fill(~keep, -torch.inf)


class VQDiffusionPipeline(DenoisingState, DiffusionPipeline):
    """Text-to-image with VQ-Diffusion (``microsoft/vq-diffusion-ithq``).

    Components: ``vqvae`` (``VQModel``), ``text_encoder`` (``CLIPTextModel``), ``tokenizer``
    (``CLIPTokenizer``), ``transformer`` (``Transformer2DModel``, discrete), ``scheduler``
    (``VQDiffusionScheduler``), ``learned_classifier_free_sampling_embeddings``
    (:class:`LearnedClassifierFreeSamplingEmbeddings`, ``["vq_diffusion", ...]`` in ``model_index.json``).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vqvae"
    _optional_components: ClassVar[tuple[str, ...]] = ()
    _callback_tensor_inputs: ClassVar[tuple[str, ...]] = ("latents", "prompt_embeds")

    vqvae: Any
    text_encoder: Any
    tokenizer: Any
    transformer: Any
    scheduler: Any
    learned_classifier_free_sampling_embeddings: Any

    def __init__(
        self,
        vqvae: Any,
        text_encoder: Any,
        tokenizer: Any,
        transformer: Any,
        scheduler: Any,
        learned_classifier_free_sampling_embeddings: Any,
    ) -> None:
        super().__init__()
        self.register_modules(
            vqvae=vqvae,
            transformer=transformer,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            learned_classifier_free_sampling_embeddings=learned_classifier_free_sampling_embeddings,
        )

    @property
    def latent_pixels(self) -> int:
        """Positions in the transformer's token grid (``sample_size ** 2``)."""
        return int(self.transformer.height) * int(self.transformer.width)

    def _encode_text(self, texts: list[str], warn: bool) -> torch.Tensor:
        ids = tokenize(self.tokenizer, texts, warn=warn).input_ids.to(self.device)
        embeds: torch.Tensor = self.text_encoder(ids)[0]
        # VQ-Diffusion conditions on unit-length token features
        unit: torch.Tensor = embeds / embeds.norm(dim=-1, keepdim=True)
        return unit

    def encode_prompt(self, texts: list[str], num_images_per_prompt: int, guidance: bool) -> torch.Tensor:
        """Unit-normalised CLIP token features ``(batch * images, tokens, width)``; with ``guidance`` the
        unconditional ones first (the learned embedding, or the encoded empty caption)."""
        embeds = repeat_per_image(self._encode_text(texts, True), num_images_per_prompt)
        if not guidance:
            return embeds
        learned = self.learned_classifier_free_sampling_embeddings
        if learned.learnable:
            negative = learned.embeddings[None].expand(len(texts), -1, -1).to(embeds)
        else:
            negative = self._encode_text([""] * len(texts), False)
        return torch.cat([repeat_per_image(negative, num_images_per_prompt), embeds])

    def check_inputs(self, args: dict[str, Any]) -> int:
        """Every input checked before any model runs; returns the number of captions.

        :raises ValueError | TypeError: naming the argument and what to pass.
        """
        name = type(self).__name__
        texts = prompt_list(args["prompt"]) if args["prompt"] is not None else None
        if not texts:
            raise ValueError(f"{name}: pass prompt (a string or a non-empty list of strings)")
        images = args["num_images_per_prompt"]
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            raise ValueError(f"{name}: num_images_per_prompt must be a positive int, got {images!r}")
        check_steps(args["num_inference_steps"], name)
        rate = args["truncation_rate"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
            raise ValueError(f"{name}: truncation_rate must be a probability in (0, 1], got {rate!r}")
        scale = args["guidance_scale"]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale != scale:
            raise ValueError(f"{name}: guidance_scale must be a number, got {scale!r}")
        check_output_type(args["output_type"], OUTPUT_TYPES, name)
        generator = args["generator"]
        if isinstance(generator, Sequence):
            raise TypeError(f"{name}: pass one torch.Generator (the scheduler draws the whole batch at once)")
        check_batch(len(texts) * images, generator)
        if args["callback_on_step_end"] is not None:
            check_callback_inputs(args["callback_on_step_end_tensor_inputs"], self._callback_tensor_inputs, name)
        latents = args["latents"]
        if latents is not None:
            shape = (len(texts) * images, self.latent_pixels)
            classes = int(self.transformer.config.num_vector_embeds)
            if not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"{name}: latents must be code indices shaped {shape}, got {got}")
            if latents.is_floating_point() or bool(((latents < 0) | (latents >= classes)).any()):
                raise ValueError(f"{name}: latents must be integer codes in [0, {classes - 1}] ({classes - 1}: mask)")
        return len(texts)

    def __call__(
        self,
        prompt: Prompt | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 5.0,
        truncation_rate: float = 1.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt``.

        :param guidance_scale: classifier-free guidance on the log-probabilities when above 1.
        :param truncation_rate: keep the most likely codes up to this total probability (1: all).
        :param latents: starting codes ``(batch, pixels)`` int64 (default: all mask tokens).
        :returns: ``ImagePipelineOutput(images=...)`` or ``(images,)``; ``"latent"`` gives the final codes.
        :raises ValueError | TypeError: for bad input, before any model runs.
        """
        batch = self.check_inputs(dict(locals())) * num_images_per_prompt
        self._guidance_scale, self._interrupt = guidance_scale, False
        guidance = guidance_scale > 1.0
        legacy = legacy_callback(callback, callback_steps, type(self).__name__)
        embeds = self.encode_prompt(prompt_list(prompt) or [], num_images_per_prompt, guidance)
        if latents is None:
            mask = int(self.transformer.config.num_vector_embeds) - 1
            latents = torch.full((batch, self.latent_pixels), mask, device=self.device)
        sample = latents.to(self.device)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        steps = self.scheduler.timesteps
        self._num_timesteps = len(steps)
        tensors: dict[str, Any] = {"latents": sample, "prompt_embeds": embeds}
        for i, t in enumerate(self.progress_bar(steps)):
            if self._interrupt:
                break
            sample, embeds = tensors["latents"], tensors["prompt_embeds"]
            model_input = torch.cat([sample] * 2) if guidance else sample
            log_p = self.transformer(model_input, encoder_hidden_states=embeds, timestep=t).sample
            if guidance:
                uncond, cond = log_p.chunk(2)
                log_p = uncond + self._guidance_scale * (cond - uncond)
                log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
            log_p = truncate(log_p, truncation_rate).clamp(-70)
            tensors["latents"] = self.scheduler.step(log_p, timestep=t, sample=sample, generator=generator).prev_sample
            if callback_on_step_end is not None:
                tensors = step_callback(self, callback_on_step_end, i, t, tensors, callback_on_step_end_tensor_inputs)
            call_legacy(legacy, i, len(steps), 1, t, tensors["latents"])
        codes = tensors["latents"]
        if output_type == "latent":
            images: Any = codes
        else:
            shape = (batch, self.transformer.height, self.transformer.width, self.vqvae.config.vq_embed_dim)
            vectors = self.vqvae.quantize.get_codebook_entry(codes, shape=shape)
            images = postprocess(self.vqvae.decode(vectors, force_not_quantize=True).sample, output_type)  # type: ignore[arg-type]
        return ImagePipelineOutput(images=images) if return_dict else (images,)
