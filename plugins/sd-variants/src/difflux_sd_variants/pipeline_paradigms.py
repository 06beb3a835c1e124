"""ParaDiGMS: Stable Diffusion sampled by parallel Picard iterations over windows of timesteps.

Shih, Belkhale, Ermon, Sadigh and Anari, *Parallel Sampling of Diffusion Models* (NeurIPS 2023,
arXiv:2305.16317), Algorithm 1. The whole trajectory ``x_0 .. x_T`` is guessed (the starting
noise everywhere); each iteration evaluates the UNet at a window of ``parallel`` timesteps in
one batch, rebuilds the window as the starting point plus the cumulative drifts (and the noise
drawn beforehand, for stochastic samplers), and slides the window past every timestep whose
change stayed below ``tolerance`` (relative to that step's noise variance). Fewer sequential
UNet calls than steps, for more total UNet work.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux.torch_utils import randn_tensor
from difflux_schedulers.parallel import ParallelScheduler
from difflux_stable_diffusion._base import Denoise
from difflux_stable_diffusion.checks import Inputs
from difflux_stable_diffusion.prompts import Prompt

from ._sd import SDComponentsNoImageEncoder

__all__ = ["StableDiffusionParadigmsPipeline"]

Generator = torch.Generator | Sequence[torch.Generator] | None


class StableDiffusionParadigmsPipeline(SDComponentsNoImageEncoder):
    """Text-to-image with Stable Diffusion 1.x / 2.x by parallel sampling (needs ``DDPMParallelScheduler``
    or ``DDIMParallelScheduler``)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _callback_tensor_inputs: tuple[str, ...] = ("latents",)

    def check_parallel(self, parallel: int, tolerance: float, eta: float) -> None:
        """:raises ValueError | TypeError: on a scheduler without the parallel step, a window below 1, a
        negative or non-finite tolerance, or ``eta != 0`` with an ODE scheduler."""
        name = type(self).__name__
        if not isinstance(self.scheduler, ParallelScheduler):
            raise TypeError(
                f"{name}: the scheduler is {type(self.scheduler).__name__}; parallel sampling needs "
                "DDPMParallelScheduler or DDIMParallelScheduler (e.g. DDPMParallelScheduler.from_config(...))"
            )
        if isinstance(parallel, bool) or not isinstance(parallel, numbers.Integral) or parallel < 1:
            raise ValueError(f"{name}: parallel (timesteps per window) must be a positive int, got {parallel!r}")
        if (
            isinstance(tolerance, bool)
            or not isinstance(tolerance, numbers.Real)
            or not math.isfinite(tolerance)
            or tolerance < 0
        ):
            raise ValueError(f"{name}: tolerance must be a finite number >= 0, got {tolerance!r}")
        if self.scheduler._is_ode_scheduler and eta != 0:
            raise ValueError(f"{name}: {type(self.scheduler).__name__} samples deterministically here; pass eta=0")

    def window_prediction(self, run: Denoise, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The (guided) noise prediction for a window: ``latents`` ``(L * B, C, h, w)`` at ``timesteps`` ``(L * B,)``
        in one UNet batch (``[unconditional, conditional]`` halves while guiding, combined by :meth:`guide`)."""
        guiding = run.sampling.guidance and self.do_classifier_free_guidance
        repeats = latents.shape[0] // (run.embeds.shape[0] // (2 if guiding else 1))
        if guiding:
            negative, positive = run.embeds.chunk(2)
            embeds = torch.cat([negative.repeat(repeats, 1, 1), positive.repeat(repeats, 1, 1)])
            prediction = self.predict_noise(run, torch.cat([timesteps] * 2), torch.cat([latents] * 2), embeds)
            return self.guide(prediction, latents.shape[1])
        return self.predict_noise(run, timesteps, latents, run.embeds.repeat(repeats, 1, 1))  # type: ignore[no-any-return]

    def parallel_denoise(
        self,
        latents: torch.Tensor,
        run: Denoise,
        parallel: int,
        tolerance: float,
        generator: Generator,
        legacy: Any = None,
    ) -> torch.Tensor:
        """ParaDiGMS (Algorithm 1) over ``run.timesteps``; returns the final latents.

        A step callback runs after each window update, with the window's first timestep index and
        the latents there (``"latents"``; what it returns replaces them).
        """
        scheduler: Any = self.scheduler
        steps, opts = run.timesteps, run.sampling
        count, batch = len(steps), latents.shape[0]
        window = min(parallel, count)
        trajectory = torch.stack([latents] * (count + 1))
        noise = torch.zeros_like(trajectory)
        for j in range(count):  # each step's noise, drawn once, before the iterations
            draw = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
            noise[j] = scheduler.step_variance(steps[j]) ** 0.5 * draw
        variances = torch.tensor([float(scheduler.step_variance(t)) for t in steps] + [0.0])
        inverse = (1.0 / variances).to(latents.device)[:, None] / latents[0].numel()
        begin, end, iteration = 0, window, 0
        self._num_timesteps = count
        with self.progress_bar(total=count) as bar:
            while begin < count:
                length = end - begin
                block = trajectory[begin:end]
                times = steps[begin:end, None].repeat(1, batch).flatten()
                flat = block.flatten(0, 1)
                prediction = self.window_prediction(run, flat, times)
                moved = scheduler.batch_step_no_noise(prediction, times, flat).reshape(block.shape)
                updated = trajectory[begin][None] + torch.cumsum(moved - block, dim=0)
                if not scheduler._is_ode_scheduler:
                    updated = updated + torch.cumsum(noise[begin:end], dim=0)
                change = (updated - trajectory[begin + 1 : end + 1]).reshape(length, batch, -1)
                error = torch.linalg.norm(change, dim=-1)
                ratio = torch.nn.functional.pad(error.pow(2) * inverse[begin + 1 : end + 1], (0, 0, 0, 1), value=1e9)
                first_unsettled = int(torch.argmax((ratio > tolerance**2).any(dim=1).int()).item())
                next_begin = begin + min(1 + first_unsettled, window)
                next_end = min(next_begin + window, count)
                trajectory[begin + 1 : end + 1] = updated
                trajectory[end : next_end + 1] = trajectory[end][None]
                iteration += 1
                bar.update(next_begin - begin)
                if opts.callback is not None and next_begin < count:
                    tensors = self.after_step(opts, begin, steps[begin], {"latents": trajectory[next_begin]})
                    replaced = tensors.get("latents")
                    if replaced is not None:
                        trajectory[next_begin] = replaced
                if legacy is not None and iteration % legacy[1] == 0:
                    legacy[0](begin, steps[begin], trajectory[begin])
                begin, end = next_begin, next_end
                if self._interrupt:
                    break
        return trajectory[-1]

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        parallel: int = 10,
        tolerance: float = 0.1,
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
        debug: bool = False,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Any:
        """Generate images for ``prompt`` by parallel sampling.

        :param parallel: timesteps evaluated per window (one UNet batch of ``parallel`` x batch x 2).
        :param tolerance: how small a timestep's update must be, relative to its noise standard deviation,
            for the window to slide past it (0.1).
        :param debug: accepted for Diffusers compatibility (cumulative sums are computed in place either way).
        :param callback: the deprecated ``callback(window start, timestep, latents)``, every ``callback_steps``
            iterations.
        :returns: ``StableDiffusionPipelineOutput(images, nsfw_content_detected)`` or a tuple.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        batch = self.check_inputs(Inputs.of(locals()))
        self.check_parallel(parallel, tolerance, eta)
        if callback is not None and (isinstance(callback_steps, bool) or not isinstance(callback_steps, int)
                                     or callback_steps < 1):
            raise ValueError(f"{type(self).__name__}: callback_steps must be a positive int, got {callback_steps!r}")
        height, width = self.default_size(height, width)
        total = batch * num_images_per_prompt
        opts = self.sampling(guidance_scale, 0.0, eta, generator, cross_attention_kwargs, callback_on_step_end,
                             callback_on_step_end_tensor_inputs, clip_skip=clip_skip)
        embeds = self.prompt_of(locals(), opts)
        steps = self.schedule(num_inference_steps)
        latents = self.prepare_latents(self.latent_shape(total, height, width), embeds.embeds.dtype, generator, latents)
        run = Denoise(steps, embeds.for_unet(), opts)
        legacy = (callback, callback_steps) if callback is not None else None
        latents = self.parallel_denoise(latents, run, parallel, tolerance, generator, legacy)
        return self.output(latents, output_type, return_dict, generator)
