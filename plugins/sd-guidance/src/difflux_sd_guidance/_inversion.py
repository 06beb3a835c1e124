"""DDIM inversion shared by DiffEdit and Pix2Pix Zero: the SD base loop run with the inverse scheduler,
with Pix2Pix Zero's noise regularisers (Parmar et al., *Zero-shot Image-to-Image Translation*,
SIGGRAPH 2023, arXiv:2302.03027, sec. 3.1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from difflux.protocols import Scheduler
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

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Scheduler,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        inverse_scheduler: Any = None,
        requires_safety_checker: bool = True,
    ) -> None:
        super().__init__(
            vae,
            text_encoder,
            tokenizer,
            unet,
            scheduler,
            safety_checker,
            feature_extractor,
            None,
            requires_safety_checker,
        )
        self.register_modules(inverse_scheduler=inverse_scheduler)

    def check_inversion(self, num_reg_steps: Any, generator: Generator) -> None:
        """Check what ``invert`` needs besides its inputs before any model runs: an ``inverse_scheduler``, and the
        regulariser options (:meth:`regularise`).

        :raises ValueError: without ``inverse_scheduler``, for ``num_reg_steps`` other than an int >= 0, or for
            regularising with a list of generators.
        """
        name = type(self).__name__
        if self.inverse_scheduler is None:
            raise ValueError(f"{name}.invert needs an inverse_scheduler (DDIMInverseScheduler.from_config(...))")
        if isinstance(num_reg_steps, bool) or not isinstance(num_reg_steps, int) or num_reg_steps < 0:
            raise ValueError(f"{name}: num_reg_steps must be an int >= 0, got {num_reg_steps!r}")
        if num_reg_steps and isinstance(generator, Sequence):
            raise ValueError(f"{name}: the regularisers draw their shifts from one generator; pass one, not a list")

    def inversion_start(self, call: Mapping[str, Any], batch: int) -> tuple[torch.Tensor, PromptEmbeds, Sampling]:
        """Check (:meth:`check_inversion`) and set up an ``invert`` call from its arguments (``locals()``).

        Returns ``(VAE latents of image (batch, C, h, w), prompt embeddings, run options)``; the prompt (and the
        negative prompt, where the call has one) is encoded guided when ``guidance_scale > 1``; ``callback`` is
        the deprecated per-step callback.
        """
        self.check_inversion(call["num_reg_steps"], call["generator"])
        callback = call["callback"]
        opts = self.sampling(
            call["guidance_scale"],
            0.0,
            0.0,
            None,
            call["cross_attention_kwargs"],
            legacy=callback,
            legacy_steps=call["callback_steps"] if callback else None,
        )
        latents = self.image_latents_of(self.image_input(call["image"]), batch, call["generator"])
        embeds = self.encode_prompt(
            call["prompt"],
            guidance=opts.guidance,
            negative_prompt=call.get("negative_prompt"),
            prompt_embeds=call["prompt_embeds"],
            negative_prompt_embeds=call.get("negative_prompt_embeds"),
        )
        return latents, embeds, opts

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
