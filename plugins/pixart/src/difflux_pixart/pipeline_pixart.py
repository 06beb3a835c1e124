"""PixArt-alpha and PixArt-sigma: text-to-image with a DiT-style transformer on T5 captions.

PixArt-alpha: Chen et al. 2023, "PixArt-alpha: Fast Training of Diffusion Transformer for
Photorealistic Text-to-Image Synthesis" (arXiv:2310.00426); PixArt-sigma: Chen et al. 2024,
"PixArt-Sigma: Weak-to-Strong Training of Diffusion Transformer for 4K Text-to-Image Generation"
(arXiv:2403.04692).

``__call__`` reads check → encode → prepare latents → denoise → decode; the loop is the Stable
Diffusion base's (:meth:`difflux_stable_diffusion._base.StableDiffusionBase.denoise`) with the
transformer call as its ``predict`` step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.protocols import Scheduler
from difflux_stable_diffusion._base import Denoise, ImagesOnly, StableDiffusionBase, fit
from difflux_stable_diffusion.checks import Inputs

from .aspect_ratios import bins_for, classify_height_width_bin, resize_and_crop_tensor
from .prompts import MaskedPromptEmbeds, Prompt, encode_prompt_t5

__all__ = ["PixArtAlphaPipeline", "PixArtSigmaPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None


def _check_pixart_inputs(name: str, args: dict[str, Any]) -> None:
    """What the SD validator does not know: masks that go with given embeddings, ``max_sequence_length``."""
    for embeds_key, mask_key in (
        ("prompt_embeds", "prompt_attention_mask"),
        ("negative_prompt_embeds", "negative_prompt_attention_mask"),
    ):
        embeds, mask = args[embeds_key], args[mask_key]
        if embeds is None:
            continue
        if mask is None:
            raise ValueError(f"{name}: {embeds_key} need {mask_key} (a (batch, tokens) tensor, 1 keep, 0 padding)")
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2]):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(
                f"{name}: {mask_key} must be shaped {tuple(embeds.shape[:2])} like {embeds_key}, got {shape}"
            )
    length = args["max_sequence_length"]
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"{name}: max_sequence_length must be a positive int (tokens), got {length!r}")
    for key in ("clean_caption", "use_resolution_binning"):
        if not isinstance(args[key], bool):
            raise TypeError(f"{name}: {key} must be True or False, got {args[key]!r}")


class _PixArt(ImagesOnly, StableDiffusionBase):
    """Components, prompt encoding, size handling and the transformer step of both PixArt pipelines."""

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components: ClassVar[tuple[str, ...]] = ("tokenizer", "text_encoder")
    _callback_tensor_inputs: tuple[str, ...] = ("latents", "prompt_embeds", "negative_prompt_embeds")
    #: PixArt-sigma has a 2048 px bucket table (transformer ``sample_size`` 256)
    _sigma: ClassVar[bool] = False
    #: ``max_sequence_length`` when the call does not give one
    _max_sequence_length: ClassVar[int] = 120
    #: a one-step run returns the scheduler's predicted clean sample (PixArt-alpha's one-step distilled models)
    _one_step_original: ClassVar[bool] = False

    transformer: Any

    def __init__(self, tokenizer: Any, text_encoder: Any, vae: Any, transformer: Any, scheduler: Scheduler) -> None:
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
        )

    def uses_guidance(self, guidance_scale: float) -> bool:
        """Classifier-free guidance runs when ``guidance_scale > 1``."""
        return guidance_scale > 1

    def default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        size = int(self.transformer.config.sample_size) * self.vae_scale_factor
        return (height or size, width or size)

    def binned_size(self, height: int, width: int) -> tuple[int, int]:
        """The training bucket nearest ``height / width`` (:mod:`difflux_pixart.aspect_ratios`)."""
        table = bins_for(self.transformer.config.sample_size, type(self).__name__, sigma=self._sigma)
        return classify_height_width_bin(height, width, ratios=table)

    def encode(self, prompt: Prompt | None, guidance: bool, **options: Any) -> MaskedPromptEmbeds:
        """Encode captions with the T5 encoder (:func:`~difflux_pixart.prompts.encode_prompt_t5`)."""
        encoder = self.text_encoder
        dtype = encoder.dtype if encoder is not None else self.transformer.dtype
        if options.get("prompt_embeds") is None and (encoder is None or self.tokenizer is None):
            raise ValueError(f"{type(self).__name__} has no text encoder / tokenizer; pass prompt_embeds")
        return encode_prompt_t5(
            encoder, self.tokenizer, prompt, device=self.device, dtype=dtype, guidance=guidance,
            pipeline=type(self).__name__, **options,
        )  # fmt: skip

    def micro_conditions(
        self, height: int, width: int, total: int, guidance: bool, dtype: torch.dtype
    ) -> dict[str, Any]:
        """PixArt-alpha 1024 px's size conditioning: ``resolution`` ``(batch, 2)`` ``[height, width]`` in pixels
        and ``aspect_ratio`` ``(batch, 1)`` ``height / width``; ``None`` for models without it."""
        config = self.transformer.config
        if not (config.sample_size == 128 or getattr(self.transformer, "use_additional_conditions", False)):
            return {"resolution": None, "aspect_ratio": None}
        resolution = torch.tensor([height, width]).repeat(total, 1).to(device=self.device, dtype=dtype)
        ratio = torch.tensor([float(height / width)]).repeat(total, 1).to(device=self.device, dtype=dtype)
        if guidance:
            resolution, ratio = torch.cat([resolution] * 2), torch.cat([ratio] * 2)
        return {"resolution": resolution, "aspect_ratio": ratio}

    def transformer_step(self, mask: torch.Tensor, added: dict[str, Any]) -> Any:
        """The loop's ``predict``: the transformer's noise prediction, without its learned-variance half."""
        latent_channels = self.transformer.config.in_channels
        learned_sigma = self.transformer.config.out_channels // 2 == latent_channels

        def predict(i: int, t: torch.Tensor, model_input: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            batch = model_input.shape[0]
            scaled = self.scheduler.scale_model_input(model_input, t)
            timestep = torch.as_tensor(t, device=scaled.device).reshape(-1).expand(batch)
            out: torch.Tensor = self.transformer(
                scaled,
                encoder_hidden_states=embeds,
                encoder_attention_mask=fit(mask, batch),
                timestep=timestep,
                added_cond_kwargs={k: fit(v, batch) for k, v in added.items()},
                cross_attention_kwargs=self._cross_attention_kwargs,
                return_dict=False,
            )[0]
            return out.chunk(2, dim=1)[0] if learned_sigma else out

        return predict

    def generate(self, args: dict[str, Any], *, one_step_original: bool) -> Any:
        """The whole call with the arguments of ``__call__`` (``one_step_original``: a one-step run returns the
        scheduler's predicted clean sample, as PixArt-alpha's one-step distilled models need)."""
        name = type(self).__name__
        height, width = self.default_size(args["height"], args["width"])
        asked = (height, width)
        if args["use_resolution_binning"]:
            height, width = self.binned_size(height, width)
        batch = self.check_inputs(Inputs.of({**args, "height": height, "width": width}))
        _check_pixart_inputs(name, args)
        images = args["num_images_per_prompt"]
        total = batch * images
        shape = self.latent_shape(total, height, width, self.transformer.config.in_channels)
        if args["latents"] is not None and tuple(args["latents"].shape) != shape:
            raise ValueError(f"{name}: latents have shape {tuple(args['latents'].shape)}, expected {shape}")
        opts = self.sampling(args["guidance_scale"], 0.0, args["eta"], args["generator"], None,
                             args["callback_on_step_end"], args["callback_on_step_end_tensor_inputs"],
                             legacy=args["callback"], legacy_steps=args["callback_steps"])  # fmt: skip
        embeds = self.encode(
            args["prompt"], opts.guidance, negative_prompt=args["negative_prompt"], num_images_per_prompt=images,
            prompt_embeds=args["prompt_embeds"], prompt_attention_mask=args["prompt_attention_mask"],
            negative_prompt_embeds=args["negative_prompt_embeds"],
            negative_prompt_attention_mask=args["negative_prompt_attention_mask"],
            clean_caption=args["clean_caption"], max_sequence_length=args["max_sequence_length"],
        )  # fmt: skip
        steps = self.schedule(args["num_inference_steps"], args["timesteps"], args["sigmas"])
        dtype = embeds.embeds.dtype
        latents = self.prepare_latents(shape, dtype, args["generator"], args["latents"])
        context, mask = embeds.for_model()
        added = self.micro_conditions(height, width, total, opts.guidance, dtype)
        run = Denoise(steps, context, opts, predict=self.transformer_step(mask, added))
        if one_step_original and len(steps) == 1:
            run.step_output = 1
        latents = self.denoise(latents, run, embeds.negative)
        if args["output_type"] == "latent":
            return self.wrap_output(latents, None, args["return_dict"])
        image = self.decode(latents)
        if args["use_resolution_binning"]:
            image = resize_and_crop_tensor(image, asked[1], asked[0])
        return self.wrap_output(self.finish(image, args["output_type"]), None, args["return_dict"])

    def __call__(
        self,
        prompt: Prompt | None = None,
        negative_prompt: Prompt | None = "",
        num_inference_steps: int = 20,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        guidance_scale: float = 4.5,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
        clean_caption: bool = True,
        use_resolution_binning: bool = True,
        max_sequence_length: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt``.

        :param prompt: caption(s); or ``prompt_embeds`` ``(batch, tokens, 4096)`` float with
            ``prompt_attention_mask`` ``(batch, tokens)`` (1 keep, 0 padding).
        :param negative_prompt: what guidance steers away from (``""`` as the models were trained).
        :param height: image height in pixels (default ``sample_size * vae_scale_factor``); with
            ``use_resolution_binning`` the image is made at the nearest trained bucket and resized
            and centre-cropped back to ``height`` x ``width``.
        :param clean_caption: clean captions as in training (needs ``beautifulsoup4`` and ``ftfy``;
            a warning otherwise, and captions are only lower-cased).
        :param max_sequence_length: T5 tokens per caption (default: 120 for PixArt-alpha, 300 for -sigma).
        :returns: ``ImagePipelineOutput(images=...)`` (``"pil"``, ``"np"`` ``(batch, h, w, 3)`` float32 in
            ``[0, 1]``, ``"pt"`` ``(batch, 3, h, w)``, or ``"latent"``), or ``(images,)``.
        :raises ValueError | TypeError: for bad input, before any model runs.
        """
        args = dict(locals())
        if max_sequence_length is None:
            args["max_sequence_length"] = self._max_sequence_length
        return self.generate(args, one_step_original=self._one_step_original)


class PixArtAlphaPipeline(_PixArt):
    """PixArt-alpha text-to-image (256, 512 and 1024 px models; 1024 px conditions on size and aspect ratio).

    Components: ``tokenizer`` (``T5Tokenizer``), ``text_encoder`` (``T5EncoderModel``), ``vae``
    (``AutoencoderKL``), ``transformer`` (``PixArtTransformer2DModel``; published folders name it
    ``Transformer2DModel``), ``scheduler`` (``DPMSolverMultistepScheduler`` in the published models).
    Call arguments: :meth:`_PixArt.__call__` (120-token captions by default).
    """

    _max_sequence_length = 120
    _one_step_original = True


class PixArtSigmaPipeline(_PixArt):
    """PixArt-sigma text-to-image (up to 2048 px buckets; 300-token captions; no size conditioning).

    Components and call arguments as :class:`PixArtAlphaPipeline` (300-token captions by default).
    """

    _sigma = True
    _max_sequence_length = 300
