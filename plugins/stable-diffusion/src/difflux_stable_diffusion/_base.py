"""What every Stable Diffusion pipeline does the same way: guidance, the denoising loop, decoding."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from difflux import DiffusionPipeline
from difflux.image import postprocess
from difflux.pipeline_utils import StepCallback, check_callback_inputs, step_callback

from ._common import guidance_scale_embedding, rescale_noise_cfg

__all__ = ["Denoise", "StableDiffusionBase"]

#: ``blend(step_index, latents) -> latents`` runs after each scheduler step (4-channel inpainting).
Blend = Callable[[int, torch.Tensor], torch.Tensor]


@dataclasses.dataclass
class Denoise:
    """One run of the denoising loop: what conditions the UNet and how guidance is applied."""

    timesteps: torch.Tensor
    embeds: torch.Tensor  # what the UNet cross-attends to ([negative, positive] when guiding)
    guidance_scale: float
    guidance: bool
    guidance_rescale: float = 0.0
    eta: float = 0.0
    generator: torch.Generator | Sequence[torch.Generator] | None = None
    timestep_cond: torch.Tensor | None = None
    added_cond_kwargs: dict[str, torch.Tensor] | None = None
    cross_attention_kwargs: dict[str, Any] | None = None
    extra_channels: torch.Tensor | None = None  # concatenated to the UNet input (9-channel inpainting)
    blend: Blend | None = None
    callback: StepCallback | None = None
    callback_names: Sequence[str] = ("latents",)


class StableDiffusionBase(DiffusionPipeline):
    """Shared steps of the Stable Diffusion family (not registered; the concrete pipelines are)."""

    _callback_tensor_inputs: tuple[str, ...] = ("latents", "prompt_embeds", "negative_prompt_embeds")

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

    def uses_guidance(self, guidance_scale: float) -> bool:
        """Classifier-free guidance runs when ``guidance_scale > 1`` and the UNet is not guidance-distilled."""
        return guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None

    def guidance_embedding(self, guidance_scale: float, batch: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The ``timestep_cond`` of guidance-distilled UNets (``time_cond_proj_dim`` set), else ``None``."""
        dim = self.unet.config.time_cond_proj_dim
        if dim is None:
            return None
        scales = torch.tensor(guidance_scale - 1).repeat(batch)
        return guidance_scale_embedding(scales, dim).to(device=self.device, dtype=dtype)

    def check_callback(self, callback: StepCallback | None, names: Sequence[str]) -> None:
        if callback is not None:
            check_callback_inputs(names, self._callback_tensor_inputs, type(self).__name__)

    # -- the loop --------------------------------------------------------------------------

    def denoise(self, latents: torch.Tensor, run: Denoise, negative: torch.Tensor | None = None) -> torch.Tensor:
        """Run the UNet and the scheduler over ``run.timesteps``; returns the final latents."""
        scheduler = self.scheduler
        embeds = run.embeds
        with self.progress_bar(total=len(run.timesteps)) as bar:
            for i, t in enumerate(run.timesteps):
                model_input = torch.cat([latents] * 2) if run.guidance else latents
                model_input = scheduler.scale_model_input(model_input, t)
                if run.extra_channels is not None:
                    model_input = torch.cat([model_input, run.extra_channels], dim=1)
                noise_pred = self.unet(
                    model_input,
                    t,
                    encoder_hidden_states=embeds,
                    timestep_cond=run.timestep_cond,
                    cross_attention_kwargs=run.cross_attention_kwargs,
                    added_cond_kwargs=run.added_cond_kwargs,
                    return_dict=False,
                )[0]
                if run.guidance:
                    uncond, text = noise_pred.chunk(2)
                    noise_pred = uncond + run.guidance_scale * (text - uncond)
                    if run.guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, text, run.guidance_rescale)
                latents = scheduler.step(
                    noise_pred, t, latents, eta=run.eta, generator=run.generator, return_dict=False
                )[0]
                if run.blend is not None:
                    latents = run.blend(i, latents)
                if run.callback is not None:
                    tensors = {"latents": latents, "prompt_embeds": embeds, "negative_prompt_embeds": negative}
                    out = step_callback(self, run.callback, i, t, tensors, run.callback_names)
                    latents, embeds, negative = out["latents"], out["prompt_embeds"], out["negative_prompt_embeds"]
                bar.update()
        return latents

    # -- decoding --------------------------------------------------------------------------

    def decode(self, latents: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """Latents to images in ``[-1, 1]`` through the VAE (undoing its scaling and shift)."""
        config = self.vae.config
        shift = config.get("shift_factor") if hasattr(config, "get") else None
        z = latents / config.scaling_factor
        if shift:
            z = z + shift
        return self.vae.decode(z.to(self.vae.dtype), return_dict=False, generator=generator)[0]  # type: ignore[no-any-return]

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
