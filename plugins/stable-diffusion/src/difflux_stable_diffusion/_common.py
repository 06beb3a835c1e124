"""Pieces the Stable Diffusion pipelines share: timesteps, guidance, VAE encode/decode, outputs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from difflux.outputs import BaseOutput
from difflux.protocols import Scheduler

__all__ = [
    "StableDiffusionPipelineOutput",
    "StableDiffusionXLPipelineOutput",
    "encode_latents",
    "guidance_scale_embedding",
    "rescale_noise_cfg",
    "set_schedule",
]

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclasses.dataclass
class StableDiffusionPipelineOutput(BaseOutput):
    """Images, and per image whether the safety checker flagged it (``None`` without a checker)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool] | None = None


@dataclasses.dataclass
class StableDiffusionXLPipelineOutput(BaseOutput):
    """SDXL images (SDXL pipelines have no safety checker)."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


def set_schedule(
    scheduler: Scheduler,
    num_inference_steps: int | None,
    device: torch.device,
    *,
    timesteps: Sequence[int] | None = None,
    sigmas: Sequence[float] | None = None,
) -> tuple[torch.Tensor, int]:
    """Set the scheduler's schedule from a step count, or from explicit ``timesteps`` / ``sigmas``.

    Returns ``(timesteps, number of inference steps)``.
    """
    if timesteps is not None and sigmas is not None:
        raise ValueError("pass timesteps or sigmas, not both")
    if timesteps is not None:
        scheduler.set_timesteps(device=device, timesteps=list(timesteps))
    elif sigmas is not None:
        scheduler.set_timesteps(device=device, sigmas=list(sigmas))
    else:
        if num_inference_steps is None or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        scheduler.set_timesteps(num_inference_steps, device)
    steps = scheduler.timesteps
    count = len(steps) if timesteps is not None or sigmas is not None else int(num_inference_steps or 0)
    return steps, count


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", eq. 15-16).

    Scales the guided prediction to the per-sample standard deviation of the text prediction,
    then mixes ``guidance_rescale`` of that with the unscaled prediction.
    """
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def guidance_scale_embedding(w: torch.Tensor, dim: int = 512, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of guidance scales ``w`` (``(batch,)``) for guidance-distilled UNets (LCM).

    Same layout as the timestep embedding of VDM (Kingma et al. 2021): ``[sin, cos]`` of
    ``1000 w`` at log-spaced frequencies, zero-padded to ``dim``.
    """
    w = w * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(math.log(10000.0) / (half - 1)))
    angles = w.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def encode_latents(vae: Any, image: torch.Tensor, generator: Generator) -> torch.Tensor:
    """VAE latents of ``image`` (``[-1, 1]``), drawn from the posterior; one generator per sample when a list.

    Not scaled: callers multiply by ``vae.config.scaling_factor`` (and shift when the VAE has one).
    """
    if isinstance(generator, Sequence) and not isinstance(generator, torch.Generator):
        if len(generator) < image.shape[0]:
            raise ValueError(f"got {len(generator)} generators for {image.shape[0]} images; pass one per image")
        parts = [vae.encode(image[i : i + 1]).latent_dist.sample(generator[i]) for i in range(image.shape[0])]
        return torch.cat(parts)
    return vae.encode(image).latent_dist.sample(generator)  # type: ignore[no-any-return]
