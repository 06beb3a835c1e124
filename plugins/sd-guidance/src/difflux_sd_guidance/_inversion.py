"""DDIM inversion shared by DiffEdit and Pix2Pix Zero: the SD base loop run with the inverse scheduler,
with Pix2Pix Zero's noise regularisers (Parmar et al., *Zero-shot Image-to-Image Translation*,
SIGGRAPH 2023, arXiv:2302.03027, sec. 3.1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from difflux_schedulers.sampling import predict_x0_eps_vp
from difflux_stable_diffusion._base import Denoise, Sampling
from difflux_stable_diffusion.prompts import PromptEmbeds

from ._sd import GuidedStableDiffusion

__all__ = ["InvertingStableDiffusion", "auto_corr_loss", "kl_divergence"]

Generator = torch.Generator | Sequence[torch.Generator] | None


def auto_corr_loss(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pix2Pix Zero's auto-correlation regulariser of a noise map ``x`` ``(B, C, h, w)`` (Parmar et al., 2023,
    eq. 3): squared means of the map times itself rolled by a random shift (the same along both axes),
    summed over samples, channels and a 2x average-pool pyramid down to 8 pixels."""
    loss = x.new_zeros(())
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            noise = x[i : i + 1, j : j + 1]
            while True:
                shift = int(torch.randint(noise.shape[2] // 2, (1,), generator=generator).item())
                loss = loss + (noise * torch.roll(noise, shifts=shift, dims=2)).mean() ** 2
                loss = loss + (noise * torch.roll(noise, shifts=shift, dims=3)).mean() ** 2
                if noise.shape[2] <= 8:
                    break
                noise = F.avg_pool2d(noise, kernel_size=2)
    return loss


def kl_divergence(x: torch.Tensor) -> torch.Tensor:
    """KL divergence of the empirical distribution of ``x`` from a standard normal (up to a factor 2)."""
    return x.var() + x.mean() ** 2 - 1 - torch.log(x.var() + 1e-7)


class InvertingStableDiffusion(GuidedStableDiffusion):
    """SD components plus an ``inverse_scheduler`` (a ``DDIMInverseScheduler``) and the inversion steps."""

    inverse_scheduler: Any

    def image_latents_of(self, pixels: torch.Tensor, total: int, generator: Generator) -> torch.Tensor:
        """Scaled VAE latents of ``pixels`` (``[-1, 1]``; 4-channel input is taken as latents), repeated to ``total``.

        :raises ValueError: when the images do not divide ``total``.
        """
        pixels = pixels.to(device=self.device, dtype=self.vae.dtype)
        if pixels.shape[1] == self.vae.config.latent_channels:
            latents = pixels
        else:
            if isinstance(generator, Sequence) and len(generator) != total:
                raise ValueError(f"{len(generator)} generators for {total} images; pass one per image")
            latents = self.encode_vae(pixels, generator)
        if total % latents.shape[0]:
            raise ValueError(f"cannot spread {latents.shape[0]} images over {total} prompts")
        return torch.cat([latents] * (total // latents.shape[0]))

    def run_inversion(
        self,
        latents: torch.Tensor,
        embeds: PromptEmbeds,
        opts: Sampling,
        steps: torch.Tensor,
        num_reg_steps: int,
        lambda_auto_corr: float,
        lambda_kl: float,
        rolls: int,
        generator: Generator,
    ) -> list[torch.Tensor]:
        """Run the SD base loop over ``steps`` with the inverse scheduler; returns the latents after each step.

        ``num_reg_steps > 0`` regularises each noise prediction (:meth:`regularise`).
        :raises ValueError: when the pipeline has no ``inverse_scheduler``.
        """
        if self.inverse_scheduler is None:
            raise ValueError(f"{type(self).__name__} needs an inverse_scheduler (DDIMInverseScheduler) to invert")
        kept: list[torch.Tensor] = []
        user = opts.callback

        def collect(pipe: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            kept.append(tensors["latents"].detach().clone())
            return dict(user(pipe, i, t, tensors) or {}) if user is not None else {}

        opts.callback = collect
        run = Denoise(steps, embeds.for_unet(), opts)
        if num_reg_steps > 0:
            run.adjust = self.regularise(num_reg_steps, lambda_auto_corr, lambda_kl, rolls, generator)
        forward = self.scheduler
        self.scheduler = self.inverse_scheduler
        try:
            self.denoise(latents, run, embeds.negative)
        finally:
            self.scheduler = forward
        return kept

    def regularise(
        self, rounds: int, lambda_auto_corr: float, lambda_kl: float, rolls: int, generator: Generator
    ) -> Any:
        """The inversion's ``adjust`` step: ``rounds`` rounds of gradient steps on the noise prediction."""
        gen = generator if isinstance(generator, torch.Generator) else None

        def adjust(
            i: int, t: torch.Tensor, latents: torch.Tensor, noise_pred: torch.Tensor, uncond: torch.Tensor | None
        ) -> torch.Tensor:
            with torch.enable_grad():
                for _ in range(rounds):
                    if lambda_auto_corr > 0:
                        for _ in range(rolls):
                            var = noise_pred.detach().clone().requires_grad_(True)
                            grad = torch.autograd.grad(auto_corr_loss(self.epsilon(var, latents, t), gen), var)[0]
                            noise_pred = noise_pred - lambda_auto_corr * grad / rolls
                    if lambda_kl > 0:
                        var = noise_pred.detach().clone().requires_grad_(True)
                        grad = torch.autograd.grad(kl_divergence(self.epsilon(var, latents, t)), var)[0]
                        noise_pred = noise_pred - lambda_kl * grad
                    noise_pred = noise_pred.detach()
            return noise_pred

        return adjust

    def epsilon(self, model_output: torch.Tensor, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noise a model output implies at timestep ``t`` of the inverse scheduler (by its ``prediction_type``)."""
        alpha = self.inverse_scheduler.alphas_cumprod[t]
        _, eps = predict_x0_eps_vp(model_output, sample, alpha, self.inverse_scheduler.config.prediction_type)
        out: torch.Tensor = eps
        return out
