"""DeepFloyd IF stage I (text to 64x64 pixels) and stage II (super-resolution of a lower stage's output)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from difflux.pipeline_utils import LegacyCallback, StepCallback, check_finite
from difflux.torch_utils import randn_tensor
from difflux_stable_diffusion.checks import Inputs

from ._base import Generator, IFBase, Prompt, pixels_as_given

__all__ = ["IFPipeline", "IFSuperResolutionPipeline", "SuperResolution"]


class IFPipeline(IFBase):
    """IF stage I: pixels ``(B, 3, H, W)`` (64x64 for the published models) from T5 text embeddings."""

    def __call__(
        self,
        prompt: Prompt | None = None,
        num_inference_steps: int = 100,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 7.0,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        generator: Generator = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int = 1,
        clean_caption: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt``.

        :param prompt: a string or a list of strings (or pass ``prompt_embeds`` ``(B, 77, width)``).
        :param num_inference_steps: denoising steps (ignored when ``timesteps`` is given).
        :param timesteps: custom descending timesteps (e.g. IF's ``fast27`` / ``smart50`` lists).
        :param guidance_scale: classifier-free guidance weight ``w`` (Imagen's eq. 2); guides when ``> 1``.
        :param negative_prompt: what to steer away from (default: the empty caption).
        :param height: image height in pixels (default ``unet.config.sample_size``), a multiple of 8.
        :param width: image width in pixels (default ``unet.config.sample_size``), a multiple of 8.
        :param eta: DDIM's eta (schedulers that take it).
        :param generator: one generator, or one per image (each image reproducible alone).
        :param output_type: ``"pil"``, ``"np"`` (``(B, H, W, 3)`` in ``[0, 1]``) or ``"pt"`` (raw ``[-1, 1]``
            samples, what stage II takes); ``"latent"`` is ``"pt"``.
        :param callback: deprecated ``callback(step, timestep, samples)`` every ``callback_steps`` steps.
        :param clean_caption: clean captions as IF's training data was (needs ``beautifulsoup4`` and ``ftfy``;
            a warning and plain lower-casing without them).
        :param latents: starting noise ``(B, C, H, W)`` instead of drawing it.
        :param callback_on_step_end: ``fn(pipe, step, timestep, tensors) -> tensors`` after each step; may read
            and replace ``latents`` (the samples), ``prompt_embeds``, ``negative_prompt_embeds``.
        :returns: :class:`~difflux_deepfloyd_if.IFPipelineOutput` or ``(images, nsfw flags, watermark flags)``.
        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        height, width = self.default_size(height, width)
        self.check_clean_caption(clean_caption)
        batch = self.check_inputs(Inputs.of(locals()))
        total = batch * num_images_per_prompt
        run, negative = self.call_run(locals())
        shape = (total, self.unet.config.in_channels, height, width)
        start = self.prepare_latents(shape, run.embeds.dtype, generator, latents)
        return self.output(self.denoise(start, run, negative), output_type, return_dict, generator)


class SuperResolution(IFBase):
    """Stage II conditioning: the lower stage's image, upscaled (bilinear) and noised to ``noise_level`` by
    ``image_noising_scheduler``, rides along the samples as extra UNet channels; ``noise_level`` is the UNet's
    class label. Components: :class:`IFBase`'s plus ``image_noising_scheduler`` (``DDPMScheduler``)."""

    image_noising_scheduler: Any

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: Any,
        unet: Any,
        scheduler: Any,
        image_noising_scheduler: Any,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        watermarker: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__(
            tokenizer,
            text_encoder,
            unet,
            scheduler,
            safety_checker,
            feature_extractor,
            watermarker,
            requires_safety_checker,
        )
        self.register_modules(image_noising_scheduler=image_noising_scheduler)
        if unet is not None and unet.config.in_channels != 6:
            raise ValueError(
                f"{type(self).__name__} needs a super-resolution UNet (6 input channels: samples and the upscaled "
                f"image), got one with {unet.config.in_channels}; pass an IF stage II UNet"
            )

    def check_noise_level(self, noise_level: Any) -> None:
        steps = int(self.image_noising_scheduler.config.num_train_timesteps)
        if isinstance(noise_level, bool) or not isinstance(noise_level, int) or not 0 <= noise_level < steps:
            raise ValueError(
                f"{type(self).__name__}: noise_level must be an int timestep of image_noising_scheduler in "
                f"[0, {steps}), got {noise_level!r}"
            )

    def check_low_res(self, image: Any, label: str = "image") -> None:
        if image is None:
            raise ValueError(f"{type(self).__name__} needs {label}= (the lower stage's output)")
        check_finite(image, label, type(self).__name__)

    def condition(
        self,
        run: Any,
        low_res: torch.Tensor,
        noise_level: int,
        height: int,
        width: int,
        generator: Generator,
    ) -> None:
        """Add the upscaled, noised ``low_res`` ``(B, 3, h, w)`` (one per output) and the noise level to ``run``."""
        upscaled = F.interpolate(low_res, (height, width), mode="bilinear", align_corners=True)
        levels = torch.full((upscaled.shape[0],), noise_level, device=upscaled.device)
        noise = randn_tensor(upscaled.shape, generator=generator, device=upscaled.device, dtype=upscaled.dtype)
        upscaled = self.image_noising_scheduler.add_noise(upscaled, noise, timesteps=levels)
        if run.sampling.guidance:
            upscaled, levels = torch.cat([upscaled] * 2), torch.cat([levels] * 2)
        run.extra["image"] = upscaled
        run.channels = ("image",)
        run.class_labels = levels


class IFSuperResolutionPipeline(SuperResolution):
    """IF stage II: ``image`` (stage I's output) upscaled to ``height`` x ``width`` (256 for the published models)."""

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        image: Any = None,
        num_inference_steps: int = 50,
        timesteps: Sequence[int] | None = None,
        guidance_scale: float = 4.0,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback: LegacyCallback | None = None,
        callback_steps: int = 1,
        cross_attention_kwargs: dict[str, Any] | None = None,
        noise_level: int = 250,
        clean_caption: bool = True,
        latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Upscale ``image`` towards ``prompt``.

        :param image: the lower stage's images: ``(B, 3, h, w)`` tensors in ``[-1, 1]`` (stage I's
            ``output_type="pt"``), arrays taken as they are, or PIL images (mapped to ``[-1, 1]``); one per prompt.
        :param noise_level: timestep of ``image_noising_scheduler`` the upscaled image is noised to (augmentation the
            stage II model was trained with), also the UNet's class label.
        :param height: output height in pixels (default ``unet.config.sample_size``).
        :param width: output width in pixels (default ``unet.config.sample_size``).

        The other arguments are :class:`IFPipeline`'s.

        :raises TypeError | ValueError: for bad input, before any model runs.
        """
        height, width = self.default_size(height, width)
        self.check_clean_caption(clean_caption)
        self.check_low_res(image)
        self.check_noise_level(noise_level)
        batch = self.check_inputs(Inputs.of(locals(), needs_image=True), image_minimum=1)
        total = batch * num_images_per_prompt
        low_res = pixels_as_given(image)
        if low_res.shape[0] != batch:
            raise ValueError(f"{type(self).__name__}: {low_res.shape[0]} images for {batch} prompts; pass one each")
        run, negative = self.call_run(locals())
        shape = (total, self.unet.config.in_channels // 2, height, width)
        start = self.prepare_latents(shape, run.embeds.dtype, generator, latents)
        low_res = low_res.to(self.device, self.unet.dtype).repeat_interleave(num_images_per_prompt, 0)
        self.condition(run, low_res, noise_level, height, width, generator)
        return self.output(self.denoise(start, run, negative), output_type, return_dict, generator)
