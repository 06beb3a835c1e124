"""What every Stable Diffusion pipeline does the same way.

Checks, guidance, initial latents (pure noise, a noised image, or an inpainting start), the
VAE in both directions, the denoising loop and the output. A pipeline's ``__call__`` strings
these steps together: check → encode → prepare latents → denoise → decode.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import torch
from difflux import DiffusionPipeline, ImagePipelineOutput
from difflux.image import postprocess
from difflux.pipeline_utils import (
    DenoisingState,
    LegacyCallback,
    StepCallback,
    call_legacy,
    cut_schedule,
    legacy_callback,
    step_callback,
)
from difflux.torch_utils import randn_tensor

from ._common import (
    StableDiffusionPipelineOutput,
    encode_latents,
    guidance_scale_embedding,
    rescale_noise_cfg,
    set_schedule,
)
from .checks import Inputs, check_inputs
from .images import preprocess_image

__all__ = ["Denoise", "Sampling", "StableDiffusionBase", "call_arguments", "say_once", "spread"]

logger = logging.getLogger("difflux")
_told: set[str] = set()

Generator = torch.Generator | Sequence[torch.Generator] | None
#: ``blend(step_index, latents, mask) -> latents`` runs after each scheduler step (4-channel inpainting).
Blend = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``predict(step_index, timestep, latents (doubled when guiding), embeds) -> noise prediction``
Predict = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``before(step_index, timestep, latents) -> latents`` runs before each step's UNet call (Attend-and-Excite's update)
Before = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``adjust(step_index, timestep, latents, noise_pred, unconditional) -> noise_pred`` runs after guidance, before
#: the scheduler step (Self-Attention Guidance, DiffEdit's inversion regularisers); ``unconditional`` is the
#: unguided half of the UNet's prediction, ``None`` when the step did not guide
Adjust = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
#: ``control(step_index, timestep, scaled latents (doubled when guiding), embeds, added_cond_kwargs, tensors)``
#: -> extra UNet keywords (ControlNet's ``down_block_additional_residuals`` / ``mid_block_additional_residual``);
#: ``tensors``: the loop's current tensors by callback name (``run.extra`` as a step callback left it)
Control = Callable[
    [int, torch.Tensor, torch.Tensor, torch.Tensor, "dict[str, Any] | None", "dict[str, torch.Tensor | None]"],
    dict[str, Any],
]


def call_arguments(frame: dict[str, Any]) -> dict[str, Any]:
    """A ``__call__``'s ``locals()`` without ``self``: the call's arguments by name."""
    return {k: v for k, v in frame.items() if k not in ("self", "__class__")}


def say_once(key: str, level: int, message: str, *args: Any) -> None:
    """Log ``message`` the first time ``key`` is seen in this process."""
    if key not in _told:
        _told.add(key)
        logger.log(level, message, *args)


def spread(tensor: torch.Tensor, total: int, what: str = "images") -> torch.Tensor:
    """Repeat a batch to ``total`` samples (``a b a b``); it must divide ``total``."""
    if total % tensor.shape[0]:
        raise ValueError(f"cannot spread {tensor.shape[0]} {what} over {total} outputs; pass 1 or {total}")
    return tensor.repeat(total // tensor.shape[0], *([1] * (tensor.ndim - 1)))


def fit(tensor: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """A conditioning tensor for a UNet batch of ``batch``: its conditional half once guidance stopped mid-run."""
    if tensor is None or tensor.shape[0] <= batch:
        return tensor
    return tensor[-batch:]


#: callback tensors that are the negative half of another tensor the UNet sees
_NEGATIVE_HALF = {
    "negative_prompt_embeds": "prompt_embeds",
    "negative_pooled_prompt_embeds": "add_text_embeds",
    "negative_add_time_ids": "add_time_ids",
    "negative_attention_mask": "attention_mask",
}


#: callback names of the UNet's ``added_cond_kwargs`` where they differ from the keyword (SDXL)
_ADDED_NAMES = {"text_embeds": "add_text_embeds", "time_ids": "add_time_ids"}


@dataclasses.dataclass
class Sampling:
    """The user's options for one run of the loop: guidance, scheduler noise, step callback."""

    guidance_scale: float
    guidance: bool  # classifier-free guidance runs (two UNet batches per step)
    guidance_rescale: float = 0.0
    eta: float = 0.0
    generator: Generator = None
    cross_attention_kwargs: dict[str, Any] | None = None
    callback: StepCallback | None = None
    callback_names: Sequence[str] = ("latents",)
    legacy: LegacyCallback | None = None  # the deprecated callback(step, timestep, latents)


@dataclasses.dataclass
class Denoise:
    """One run of the denoising loop: what conditions the UNet, and the options it runs with."""

    timesteps: torch.Tensor
    embeds: torch.Tensor  # what the UNet cross-attends to ([negative, positive] when guiding)
    sampling: Sampling
    timestep_cond: torch.Tensor | None = None
    added_cond_kwargs: dict[str, torch.Tensor] | None = None
    class_labels: torch.Tensor | None = None
    #: named tensors the UNet input or the blend uses (``mask``, ``masked_image_latents``, ``depth_mask``,
    #: ``image``); a step callback may read and replace them
    extra: dict[str, torch.Tensor | None] = dataclasses.field(default_factory=dict)
    channels: tuple[str, ...] = ()  # names in ``extra`` concatenated to the UNet input, in this order
    blend: Blend | None = None
    predict: Predict | None = None  # replaces the UNet call (pipelines whose UNet takes other inputs)
    control: Control | None = None  # adds keywords to each UNet call (control residuals)
    before: Before | None = None  # changes the latents before each UNet call
    adjust: Adjust | None = None  # changes the guided prediction before each scheduler step
    #: which output of ``scheduler.step`` becomes the next latents: 0 the previous sample, 1 the predicted
    #: clean sample (PixArt-alpha's one-step distilled models)
    step_output: int = 0


class StableDiffusionBase(DenoisingState, DiffusionPipeline):
    """Shared steps of the Stable Diffusion family (not registered; the concrete pipelines are).

    During a run the pipeline exposes what a step callback reads (:class:`~difflux.pipeline_utils.DenoisingState`):
    ``guidance_scale``, ``do_classifier_free_guidance``, ``cross_attention_kwargs``, ``num_timesteps``,
    ``interrupt``; setting ``pipe._guidance_scale = 0.0`` in a callback turns guidance off from the next step.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _exclude_from_cpu_offload = ("safety_checker",)

    _callback_tensor_inputs: tuple[str, ...] = ("latents", "prompt_embeds", "negative_prompt_embeds")
    #: UNet batches per step while guiding: 2 (negative, positive); InstructPix2Pix 3 (text, image, neither)
    _guidance_batches: ClassVar[int] = 2
    #: the callback names of ``Denoise.embeds`` and of its negative half (Kandinsky: ``image_embeds``)
    _embeds_names: ClassVar[tuple[str, str]] = ("prompt_embeds", "negative_prompt_embeds")
    #: encode and decode with a float32 VAE when its config says ``force_upcast`` (SDXL, x4 upscaler)
    _upcast_vae: ClassVar[bool] = False
    #: normalise latents with the VAE's ``latents_mean`` / ``latents_std`` where it has them (SDXL)
    _vae_latent_stats: ClassVar[bool] = False

    # components (set by register_modules; which ones exist depends on the pipeline)
    vae: Any
    unet: Any
    scheduler: Any
    text_encoder: Any
    tokenizer: Any
    text_encoder_2: Any
    tokenizer_2: Any
    safety_checker: Any
    feature_extractor: Any
    image_encoder: Any

    @property
    def vae_scale_factor(self) -> int:
        vae = getattr(self, "vae", None)
        return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8

    def default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        height = height if height is not None else h * self.vae_scale_factor
        width = width if width is not None else w * self.vae_scale_factor
        if height % 8 or width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
        return height, width

    def warn_about_safety_checker(self, safety_checker: Any, feature_extractor: Any, required: bool) -> None:
        """Say once when the checker is missing (a warning unless ``required`` is off); refuse one without inputs."""
        name = type(self).__name__
        if safety_checker is None and required:
            say_once(
                f"{name}:no-checker",
                logging.WARNING,
                "%s runs without a safety checker although requires_safety_checker=True; pass "
                "requires_safety_checker=False to say this is intended",
                name,
            )
        elif safety_checker is None:
            say_once(f"{name}:off", logging.INFO, "%s: no safety checker (requires_safety_checker=False)", name)
        elif feature_extractor is None:
            raise ValueError(f"{name}: a safety_checker needs a feature_extractor to prepare its input")

    # -- check -----------------------------------------------------------------------------

    def uses_guidance(self, guidance_scale: float) -> bool:
        """Classifier-free guidance runs when ``guidance_scale > 1`` and the UNet is not guidance-distilled."""
        return guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the current step guides (``guidance_scale > 1`` and a UNet that is not guidance-distilled)."""
        return self.uses_guidance(self._guidance_scale)

    def check_inputs(self, args: Inputs, *, image_minimum: int | None = None) -> int:
        """Check every input before any model runs (:func:`~.checks.check_inputs`); returns the prompt count."""
        return check_inputs(self, args, image_minimum=image_minimum)

    def sampling(
        self,
        guidance_scale: float,
        guidance_rescale: float = 0.0,
        eta: float = 0.0,
        generator: Generator = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback: StepCallback | None = None,
        callback_names: Sequence[str] = ("latents",),
        *,
        legacy: LegacyCallback | None = None,
        legacy_steps: int | None = None,
        clip_skip: int | None = None,
    ) -> Sampling:
        """The loop options; sets the run state a step callback reads (``pipe.guidance_scale`` ...).

        ``legacy`` / ``legacy_steps``: the deprecated ``callback=`` / ``callback_steps=`` (a ``FutureWarning``).
        """
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._cross_attention_kwargs = cross_attention_kwargs
        self._clip_skip = clip_skip
        self._interrupt = False
        self._num_timesteps = 0
        guidance = self.uses_guidance(guidance_scale)
        old = legacy_callback(legacy, legacy_steps, type(self).__name__)
        return Sampling(
            guidance_scale,
            guidance,
            guidance_rescale,
            eta,
            generator,
            cross_attention_kwargs,
            callback,
            callback_names,
            old,
        )

    def sampling_of(self, a: Mapping[str, Any], **changes: Any) -> Sampling:
        """The loop options (:meth:`sampling`) of a call from its arguments by name (its ``locals()`` or
        :func:`call_arguments`): ``guidance_scale``, and ``guidance_rescale``, ``eta``, ``generator``,
        ``cross_attention_kwargs``, ``callback_on_step_end`` / ``callback_on_step_end_tensor_inputs``, the deprecated
        ``callback`` / ``callback_steps`` and ``clip_skip`` where the call takes them (defaults otherwise);
        ``changes`` replace arguments (a computed ``cross_attention_kwargs``)."""
        a = {**a, **changes}
        return self.sampling(
            a["guidance_scale"],
            a.get("guidance_rescale", 0.0),
            a.get("eta", 0.0),
            a.get("generator"),
            a.get("cross_attention_kwargs"),
            a.get("callback_on_step_end"),
            a.get("callback_on_step_end_tensor_inputs", ("latents",)),
            legacy=a.get("callback"),
            legacy_steps=a.get("callback_steps"),
            clip_skip=a.get("clip_skip"),
        )

    def guidance_embedding(self, guidance_scale: float, batch: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The ``timestep_cond`` of guidance-distilled UNets (``time_cond_proj_dim`` set), else ``None``."""
        dim = self.unet.config.time_cond_proj_dim
        if dim is None:
            return None
        scales = torch.tensor(guidance_scale - 1).repeat(batch)
        return guidance_scale_embedding(scales, dim).to(device=self.device, dtype=dtype)

    # -- schedules -------------------------------------------------------------------------

    def schedule(
        self,
        num_inference_steps: int | None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        *,
        strength: float | None = None,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
    ) -> torch.Tensor:
        """Set the scheduler's schedule and cut it at whole steps (:func:`difflux.pipeline_utils.cut_schedule`).

        ``strength`` (image-to-image), ``denoising_start`` (a refiner) and ``denoising_end`` (a base
        handing over) pick the part of the schedule this run takes; the scheduler's begin index is set.
        Returns the timesteps of the run.

        :raises ValueError: when the cut leaves no denoising step.
        """
        set_schedule(self.scheduler, num_inference_steps, self.device, timesteps=timesteps, sigmas=sigmas)
        cut = cut_schedule(
            self.scheduler,
            strength=strength,
            denoising_start=denoising_start,
            denoising_end=denoising_end,
            pipeline=type(self).__name__,
        )
        return cut.timesteps

    # -- latents ---------------------------------------------------------------------------

    def prepare_latents(
        self, shape: tuple[int, ...], dtype: torch.dtype, generator: Generator, latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Starting noise (drawn, or ``latents`` checked against ``shape``), scaled for the scheduler."""
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        elif tuple(latents.shape) != tuple(shape):
            raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {tuple(shape)}")
        scaled: torch.Tensor = latents.to(self.device) * self.scheduler.init_noise_sigma
        return scaled

    def latent_shape(self, total: int, height: int, width: int, channels: int | None = None) -> tuple[int, ...]:
        channels = self.unet.config.in_channels if channels is None else channels
        return (total, channels, height // self.vae_scale_factor, width // self.vae_scale_factor)

    def image_input(self, image: Any) -> torch.Tensor:
        """``image=`` of image-to-image as a tensor in ``[-1, 1]`` (or the latents given), at its own size."""
        return preprocess_image(image, multiple=self.vae_scale_factor, latent_channels=self.vae.config.latent_channels)

    def add_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, generator: Generator) -> torch.Tensor:
        """``latents`` noised to the first of ``timesteps`` (fresh noise from ``generator``)."""
        noise = randn_tensor(latents.shape, generator=generator, device=self.device, dtype=latents.dtype)
        noised: torch.Tensor = self.scheduler.add_noise(latents, noise, timesteps[:1].repeat(latents.shape[0]))
        return noised

    def _latent_stats(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self._vae_latent_stats:
            return None
        mean, std = self.vae.config.get("latents_mean"), self.vae.config.get("latents_std")
        if mean is None or std is None:
            return None
        shape = (1, len(mean), 1, 1)
        return (
            torch.tensor(mean).view(shape).to(self.device, dtype),
            torch.tensor(std).view(shape).to(self.device, dtype),
        )

    def _upcast(self) -> bool:
        return self._upcast_vae and bool(self.vae.config.get("force_upcast", False))

    def encode_vae(self, pixels: torch.Tensor, generator: Generator, *, stats: bool = False) -> torch.Tensor:
        """Scaled VAE latents of ``pixels`` (``[-1, 1]``); one generator per sample when a list.

        ``stats``: normalise with the VAE's ``latents_mean`` / ``latents_std`` where it has them (SDXL img2img).
        """
        dtype, vae_dtype = pixels.dtype, self.vae.dtype
        upcast = self._upcast()
        if upcast:
            pixels = pixels.float()
            self.vae.to(dtype=torch.float32)
        latents = encode_latents(self.vae, pixels, generator)
        if upcast:
            self.vae.to(dtype=vae_dtype)
        latents = latents.to(dtype)
        scale = float(self.vae.config.scaling_factor)
        moments = self._latent_stats(dtype) if stats else None
        if moments is not None:
            return (latents - moments[0]) * scale / moments[1]
        return latents * scale

    def image_latents(
        self, image: torch.Tensor, total: int, dtype: torch.dtype, generator: Generator, *, per_output: bool = False
    ) -> torch.Tensor:
        """Scaled latents of ``image`` (latents pass through), spread to ``total`` samples.

        With a list of generators the image is repeated before encoding, so that each output draws
        its posterior sample with its own generator. ``per_output`` (image-to-image): SDXL's
        ``latents_mean`` / ``latents_std`` normalisation applies.
        """
        image = image.to(device=self.device, dtype=dtype)
        if image.shape[1] == self.vae.config.latent_channels:
            return spread(image, total)
        if isinstance(generator, Sequence) and image.shape[0] < total:
            image = spread(image, total)
        return spread(self.encode_vae(image, generator, stats=per_output), total)

    def inpaint_blending(self) -> bool:
        """Whether the UNet inpaints by blending (4 input channels) rather than seeing the mask (9)."""
        channels, latent = self.unet.config.in_channels, self.vae.config.latent_channels
        if channels not in (4, 2 * latent + 1):
            raise ValueError(
                f"{type(self).__name__}: the UNet takes {channels} input channels; inpainting needs 4 (blending) "
                f"or {2 * latent + 1} (latents + mask + masked image latents)"
            )
        return bool(channels == 4)

    def inpaint_latents(
        self,
        pixels: torch.Tensor,
        shape: tuple[int, ...],
        timesteps: torch.Tensor,
        strength: float,
        generator: Generator,
        latents: torch.Tensor | None,
        *,
        blending: bool,
        add_noise: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(starting latents, noise, image latents)`` of inpainting.

        At full strength the start is pure noise, otherwise the noised image; without ``add_noise``
        (an SDXL refiner taking over) the image latents as they are. Image latents are only made
        when blending or starting from the image.
        """
        total, dtype = shape[0], pixels.dtype
        full_strength = strength == 1.0
        image_latents = None
        if blending or (latents is None and not (full_strength and add_noise)):
            image_latents = self.image_latents(pixels, total, dtype, generator)
        if latents is not None:
            noise = latents.to(self.device)
            return noise * self.scheduler.init_noise_sigma, noise, image_latents
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=dtype)
        if full_strength and add_noise:
            return noise * self.scheduler.init_noise_sigma, noise, image_latents
        if image_latents is None:
            raise RuntimeError(
                "StableDiffusionBase.inpaint_latents: internal check failed: image_latents is not None"
            )
        if not add_noise:
            return image_latents, noise, image_latents
        start = self.scheduler.add_noise(image_latents, noise, timesteps[:1].repeat(total))
        return start, noise, image_latents

    def mask_latents(
        self,
        mask: torch.Tensor,
        masked_image: torch.Tensor | None,
        total: int,
        dtype: torch.dtype,
        generator: Generator,
        guidance: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The mask at latent size and the masked image's latents, batched (and doubled when guiding)."""
        size = (mask.shape[-2] // self.vae_scale_factor, mask.shape[-1] // self.vae_scale_factor)
        mask = torch.nn.functional.interpolate(mask, size=size).to(device=self.device, dtype=dtype)
        mask = spread(mask, total, "masks")
        latents = None if masked_image is None else self.image_latents(masked_image, total, dtype, generator)
        if guidance:
            mask = torch.cat([mask] * 2)
            latents = None if latents is None else torch.cat([latents] * 2)
        return mask, latents

    def inpaint_run(
        self,
        run: Denoise,
        mask: torch.Tensor,
        masked_latents: torch.Tensor | None,
        image_latents: torch.Tensor | None,
        noise: torch.Tensor,
        *,
        blending: bool,
    ) -> Denoise:
        """Condition the loop on the mask: blend the known region back, or feed mask and masked latents to the UNet."""
        run.extra.update(mask=mask, masked_image_latents=masked_latents)
        if not blending:
            if masked_latents is None:
                raise RuntimeError(
                    "StableDiffusionBase.inpaint_run: internal check failed: masked_latents is not None"
                )
            run.channels = ("mask", "masked_image_latents")
            return run
        if image_latents is None:
            raise RuntimeError("StableDiffusionBase.inpaint_run: internal check failed: image_latents is not None")
        steps, known = run.timesteps, image_latents

        def blend(i: int, current: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
            proper = known
            if i < len(steps) - 1:
                proper = self.scheduler.add_noise(known, noise, steps[i + 1 : i + 2])
            keep = keep[-current.shape[0] :]
            return (1 - keep) * proper + keep * current

        run.blend = blend
        return run

    # -- the loop --------------------------------------------------------------------------

    def loop_tensors(
        self, latents: torch.Tensor, run: Denoise, negative: torch.Tensor | None
    ) -> dict[str, torch.Tensor | None]:
        """The tensors of the loop by their callback names (``prompt_embeds`` as the UNet sees them)."""
        embeds_name, negative_name = self._embeds_names
        tensors: dict[str, torch.Tensor | None] = {"latents": latents, embeds_name: run.embeds, negative_name: negative}
        if run.added_cond_kwargs is not None and "time_ids" in run.added_cond_kwargs:  # SDXL
            text, ids = run.added_cond_kwargs["text_embeds"], run.added_cond_kwargs["time_ids"]
            guided = run.sampling.guidance
            tensors.update(
                add_text_embeds=text,
                add_time_ids=ids,
                negative_pooled_prompt_embeds=text[: text.shape[0] // 2] if guided else None,
                negative_add_time_ids=ids[: ids.shape[0] // 2] if guided else None,
            )
        tensors.update(run.extra)
        return tensors

    def denoise(self, latents: torch.Tensor, run: Denoise, negative: torch.Tensor | None = None) -> torch.Tensor:
        """Run the UNet and the scheduler over ``run.timesteps``; returns the final latents.

        Each step reads the run state anew: ``pipe._guidance_scale`` (guidance stops once it is at
        most 1: the UNet then sees the conditional half of every doubled tensor), ``pipe._interrupt``
        (stop), and the tensors a step callback replaced.
        """
        scheduler, opts = self.scheduler, run.sampling
        tensors = self.loop_tensors(latents, run, negative)
        order = max(int(getattr(scheduler, "order", 1) or 1), 1)
        length = len(run.timesteps)
        self._num_timesteps = length
        with self.progress_bar(total=length) as bar:
            for i, t in enumerate(run.timesteps):
                if self._interrupt:
                    break
                current = tensors["latents"]
                if current is None:
                    raise RuntimeError("StableDiffusionBase.denoise: internal check failed: current is not None")
                latents = current if run.before is None else run.before(i, t, current)
                latents = self.denoise_step(run, i, t, latents, tensors)
                tensors["latents"] = latents
                if opts.callback is not None:
                    tensors = self.after_step(opts, i, t, tensors)
                call_legacy(opts.legacy, i, length, order, t, latents)
                bar.update()
        final = tensors["latents"]
        if final is None:
            raise RuntimeError("StableDiffusionBase.denoise: internal check failed: final is not None")
        return final

    def denoise_step(
        self, run: Denoise, i: int, t: torch.Tensor, latents: torch.Tensor, tensors: dict[str, torch.Tensor | None]
    ) -> torch.Tensor:
        """Step ``i`` of the loop: the (guided) prediction, the scheduler step and the blend; the new latents.

        While guiding, the UNet sees ``_guidance_batches`` stacked copies of ``latents``, combined by
        :meth:`guide`. A pipeline whose step works on parts of the latents (MultiDiffusion's views)
        calls it once per part. When ``tensors`` has a ``"denoised"`` entry, it receives the
        scheduler's clean estimate (its ``pred_original_sample``: LCM's ``denoised``).
        """
        opts = run.sampling
        guiding = opts.guidance and self.do_classifier_free_guidance
        model_input = torch.cat([latents] * self._guidance_batches) if guiding else latents
        embeds = fit(tensors[self._embeds_names[0]], model_input.shape[0])
        if embeds is None:
            raise RuntimeError("StableDiffusionBase.denoise_step: internal check failed: embeds is not None")
        if run.predict is not None:
            noise_pred = run.predict(i, t, model_input, embeds)
        else:
            noise_pred = self.predict_noise(run, t, model_input, embeds, tensors, step=i)
        raw = noise_pred
        if guiding:
            noise_pred = self.guide(noise_pred, latents.shape[1])
        if run.adjust is not None:
            noise_pred = run.adjust(i, t, latents, noise_pred, raw.chunk(2)[0] if guiding else None)
        noise_pred = self.drop_variance(noise_pred, latents.shape[1])
        out = self.scheduler.step(noise_pred, t, latents, eta=opts.eta, generator=opts.generator, return_dict=False)
        latents = out[run.step_output]
        if "denoised" in tensors and len(out) > 1:
            tensors["denoised"] = out[1]
        if run.blend is not None:
            mask = tensors["mask"]
            if mask is None:
                raise RuntimeError("StableDiffusionBase.denoise_step: internal check failed: mask is not None")
            latents = run.blend(i, latents, mask)
        return latents

    def guide(self, noise_pred: torch.Tensor, channels: int) -> torch.Tensor:
        """Classifier-free guidance of a doubled prediction ``[unconditional, conditional]``.

        ``noise_pred``: ``(2B, C, h, w)``; returns ``(B, C, h, w)``. A UNet that also predicts its
        variance (``C = 2 * channels``: Kandinsky, DeepFloyd IF, unCLIP) has the noise half guided and
        the conditional variance kept. ``guidance_rescale`` (Lin et al. 2023, arXiv:2305.08891, sec. 3.4)
        applies to the noise half.
        """
        uncond, text = noise_pred.chunk(2)
        variance = None
        if noise_pred.shape[1] == 2 * channels:
            uncond, text, variance = uncond[:, :channels], text[:, :channels], text[:, channels:]
        guided = uncond + self._guidance_scale * (text - uncond)
        if self._guidance_rescale > 0.0:
            guided = rescale_noise_cfg(guided, text, self._guidance_rescale)
        return guided if variance is None else torch.cat([guided, variance], dim=1)

    def drop_variance(self, noise_pred: torch.Tensor, channels: int) -> torch.Tensor:
        """The noise half of a learned-variance prediction unless the scheduler reads the variance
        (``variance_type`` ``"learned"`` / ``"learned_range"``); other predictions pass unchanged."""
        if noise_pred.shape[1] != 2 * channels:
            return noise_pred
        # only a scheduler that declares variance_type reads it: a DDIM made from a DDPM config keeps the key
        # unused (Diffusers then crashes; difflux drops the variance)
        declared = "variance_type" in inspect.signature(type(self.scheduler).__init__).parameters
        if declared and getattr(self.scheduler.config, "variance_type", None) in ("learned", "learned_range"):
            return noise_pred
        return noise_pred[:, :channels]

    def after_step(
        self, opts: Sampling, i: int, t: torch.Tensor, tensors: dict[str, torch.Tensor | None]
    ) -> dict[str, torch.Tensor | None]:
        """Run ``callback_on_step_end``; what it returns is used from the next step on.

        A returned negative part (``negative_prompt_embeds``, ``negative_pooled_prompt_embeds``,
        ``negative_add_time_ids``) replaces the negative half of the stacked tensor the UNet sees.
        """
        if opts.callback is None:
            raise RuntimeError("StableDiffusionBase.after_step: internal check failed: opts.callback is not None")
        out = step_callback(self, opts.callback, i, t, tensors, opts.callback_names)
        halves = {**_NEGATIVE_HALF, self._embeds_names[1]: self._embeds_names[0]}
        for negative, whole_name in halves.items():
            new, whole = out.get(negative), out.get(whole_name)
            if new is None or new is tensors.get(negative) or whole is None:
                continue
            if whole.shape[0] == 2 * new.shape[0]:
                out[whole_name] = torch.cat([new.to(whole), whole[new.shape[0] :]])
        return out

    def predict_noise(
        self,
        run: Denoise,
        t: torch.Tensor,
        model_input: torch.Tensor,
        embeds: torch.Tensor,
        tensors: dict[str, torch.Tensor | None] | None = None,
        *,
        step: int = 0,
    ) -> Any:
        """The UNet's prediction for the (scaled) ``model_input`` with ``run``'s extra channels and conditioning.

        ``tensors``: the loop's current tensors by callback name (default: those ``run`` started with).
        ``step``: the index in ``run.timesteps`` (what ``run.control`` is told).
        """
        source = run.extra if tensors is None else tensors
        batch = model_input.shape[0]
        model_input = self.scheduler.scale_model_input(model_input, t)
        latents_in = model_input
        if run.channels:
            parts = [fit(source[name], batch) for name in run.channels]
            model_input = torch.cat([model_input, *(p for p in parts if p is not None)], dim=1)
        added: dict[str, Any] | None = None
        if run.added_cond_kwargs is not None:
            # each extra conditioning tensor as a step callback may have replaced it (SDXL's under ``add_*`` names)
            added = {
                key: fit(source.get(_ADDED_NAMES.get(key, key), value), batch)
                for key, value in run.added_cond_kwargs.items()
            }
        control = run.control(step, t, latents_in, embeds, added, source) if run.control is not None else {}
        return self.unet(
            model_input,
            t,
            encoder_hidden_states=embeds,
            timestep_cond=fit(run.timestep_cond, batch),
            class_labels=fit(run.class_labels, batch),
            cross_attention_kwargs=self._cross_attention_kwargs,
            added_cond_kwargs=added,
            return_dict=False,
            **control,
        )[0]

    # -- decoding --------------------------------------------------------------------------

    def decode(self, latents: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """Latents to images in ``[-1, 1]`` through the VAE (undoing its scaling, shift or latent statistics)."""
        config = self.vae.config
        upcast = self._upcast() and self.vae.dtype == torch.float16
        if upcast:
            self.vae.to(dtype=torch.float32)
        moments = self._latent_stats(latents.dtype)
        if moments is not None:
            z = latents * moments[1] / config.scaling_factor + moments[0]
        else:
            z = latents / config.scaling_factor
            shift = config.get("shift_factor") if hasattr(config, "get") else None
            z = z + shift if shift else z
        image: torch.Tensor = self.vae.decode(z.to(self.vae.dtype), return_dict=False, generator=generator)[0]
        if upcast:
            self.vae.to(dtype=torch.float16)
        return image

    def run_safety_checker(self, image: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, list[bool] | None]:
        """``(images, nsfw flags)``; flags are ``None`` when the pipeline has no safety checker."""
        checker = getattr(self, "safety_checker", None)
        if checker is None:
            return image, None
        pil = postprocess(image, "pil")
        features = self.feature_extractor(pil, return_tensors="pt").pixel_values.to(device=self.device, dtype=dtype)
        image, flags = checker(images=image, clip_input=features)
        return image, [bool(f) for f in flags]

    def finish(self, image: torch.Tensor, output_type: str, flags: list[bool] | None = None) -> Any:
        """Decoded images as ``output_type``; images the safety checker flagged stay black."""
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(
                f"{type(self).__name__}: output_type={output_type!r}; choose 'pil', 'np', 'pt' or 'latent'"
            )
        if flags is None or not any(flags):
            return postprocess(image, output_type)  # type: ignore[arg-type]
        parts = [postprocess(img[None], "pt", do_denormalize=not flagged) for img, flagged in zip(image, flags)]
        return postprocess(torch.cat(parts), output_type, do_denormalize=False)  # type: ignore[arg-type, list-item]

    def output(self, latents: torch.Tensor, output_type: str, return_dict: bool, generator: Generator = None) -> Any:
        """Decode (unless ``output_type="latent"``), check safety, and wrap the images as the pipeline returns them."""
        flags = None
        if output_type == "latent":
            images: Any = latents
        else:
            decoded, flags = self.run_safety_checker(self.decode(latents, generator), latents.dtype)
            images = self.finish(decoded, output_type, flags)
        return self.wrap_output(images, flags, return_dict)

    def wrap_output(self, images: Any, flags: list[bool] | None, return_dict: bool) -> Any:
        """``StableDiffusionPipelineOutput`` or ``(images, flags)``; pipelines without a checker override it."""
        if not return_dict:
            return images, flags
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=flags)


class ImagesOnly:
    """Mixin: the pipeline returns ``ImagePipelineOutput`` / ``(images,)`` (no safety flags)."""

    def wrap_output(self, images: Any, flags: list[bool] | None, return_dict: bool) -> Any:
        return ImagePipelineOutput(images=images) if return_dict else (images,)
