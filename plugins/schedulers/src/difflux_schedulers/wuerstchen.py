"""Würstchen's continuous-time DDPM sampler (Pernias et al. 2023, "Würstchen: An Efficient
Architecture for Large-Scale Text-to-Image Diffusion Models").

Timesteps are fractions ``t`` in ``[0, 1]`` (1 is pure noise); the noise level is the cosine
schedule ``alpha_bar(t) = cos²((t + s) / (1 + s) · π/2) / cos²(s / (1 + s) · π/2)`` clamped to
``[1e-4, 0.9999]``, with ``t`` warped by ``scaler`` (``1 - (1 - t)^scaler`` above 1, ``t^scaler``
below). Each step is the DDPM posterior from ``t`` to the next timestep, without noise on the last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from difflux.schedulers import SchedulerOutput
from difflux.torch_utils import randn_tensor

from ._base import BaseScheduler, Generator, custom_array

__all__ = ["DDPMWuerstchenScheduler", "wuerstchen_alpha_cumprod"]


def wuerstchen_alpha_cumprod(t: torch.Tensor, scaler: float, s: float) -> torch.Tensor:
    """``alpha_bar(t)`` of the (warped) cosine schedule, clamped to ``[1e-4, 0.9999]``; ``t`` in ``[0, 1]``."""
    if scaler > 1:
        t = 1 - (1 - t) ** scaler
    elif scaler < 1:
        t = t**scaler
    s_t = torch.tensor([s], device=t.device)
    init = torch.cos(s_t / (1 + s_t) * math.pi * 0.5) ** 2
    return (torch.cos((t + s_t) / (1 + s_t) * math.pi * 0.5) ** 2 / init).clamp(0.0001, 0.9999)


class DDPMWuerstchenScheduler(BaseScheduler):
    """The Würstchen prior / decoder sampler; config keys as Diffusers' ``DDPMWuerstchenScheduler``.

    ``set_timesteps(n)`` gives the ``n + 1`` fractions ``1, ..., 0``; the loop steps over all but the
    last. ``step(model_output, t, sample)`` takes ``t`` as a ``(batch,)`` tensor of fractions (a
    scalar is broadcast over the batch).
    """

    num_train_timesteps = 1000  # Diffusers' __len__ reads this config key, which the class does not have

    def __init__(self, scaler: float = 1.0, s: float = 0.008) -> None:
        self.scaler = scaler
        self.s = torch.tensor([s])
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.empty(0)

    def _alpha_cumprod(self, t: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
        return wuerstchen_alpha_cumprod(t.to(device) if device is not None else t, self.config.scaler, self.config.s)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        device: str | torch.device | None = None,
        *,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """``num_inference_steps + 1`` evenly spaced fractions from 1 to 0, or the given ``timesteps``
        (fractions, descending, the last one the end point)."""
        if isinstance(timesteps, (str, torch.device)) and device is None:
            timesteps, device = None, timesteps  # set_timesteps(n, "cuda"), as other schedulers take it
        self._check_set_timesteps_args(num_inference_steps, timesteps, sigmas, accepts_sigmas=False)
        if timesteps is not None:
            values = custom_array(timesteps, "timesteps", type(self).__name__)
            if len(values) < 2 or (values[1:] >= values[:-1]).any() or values[0] > 1 or values[-1] < 0:
                raise ValueError(
                    "DDPMWuerstchenScheduler.set_timesteps: timesteps= must be at least two strictly "
                    f"descending fractions in [0, 1], got {values.tolist()}"
                )
            self.timesteps = torch.tensor(values, dtype=torch.float32, device=device)
            self.num_inference_steps = len(values) - 1
        else:
            n = self._required_steps(type(self).__name__, num_inference_steps)
            self.timesteps = torch.linspace(1.0, 0.0, n + 1, device=device)
            self.num_inference_steps = n
        self._reset_step_state()

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The model takes the sample unscaled."""
        return sample

    def previous_timestep(self, timestep: torch.Tensor) -> torch.Tensor:
        """The schedule's fraction after ``timestep`` (``(batch,)``), one per sample.

        :raises ValueError: if ``timestep`` is the last one (nothing follows it).
        """
        timestep = torch.as_tensor(timestep).reshape(-1)
        index = int((self.timesteps - timestep[0].to(self.timesteps.device)).abs().argmin().item())
        if index + 1 >= len(self.timesteps):
            raise ValueError(
                f"DDPMWuerstchenScheduler: timestep {float(timestep[0])} is the end of the schedule; "
                "the loop runs over scheduler.timesteps[:-1]"
            )
        return self.timesteps[index + 1][None].expand(timestep.shape[0])

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One DDPM posterior step from ``timestep`` to the next fraction; ``model_output`` is the
        predicted noise, shaped like ``sample``."""
        self._require_timesteps()
        dtype, device = model_output.dtype, model_output.device
        t = torch.as_tensor(timestep, device=device).reshape(-1).float()
        if t.shape[0] == 1 and sample.shape[0] > 1:
            t = t.expand(sample.shape[0])
        prev_t = self.previous_timestep(t).to(device)
        self._step_index = (self._step_index or 0) + 1
        view = (t.shape[0], *[1] * (sample.ndim - 1))
        alpha_cumprod = self._alpha_cumprod(t, device).view(view)
        alpha_cumprod_prev = self._alpha_cumprod(prev_t, device).view(view)
        alpha = alpha_cumprod / alpha_cumprod_prev
        mu = (1.0 / alpha).sqrt() * (sample - (1 - alpha) * model_output / (1 - alpha_cumprod).sqrt())
        noise = randn_tensor(mu.shape, generator=generator, device=device, dtype=dtype)
        std = ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt() * noise
        prev_sample = (mu + std * (prev_t != 0).float().view(view)).to(dtype)
        return self._output(prev_sample, None, return_dict)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Noise ``original_samples`` to the fractions ``timesteps`` (``(batch,)``)."""
        timesteps = torch.as_tensor(timesteps).reshape(-1)
        view = (timesteps.shape[0], *[1] * (original_samples.ndim - 1))
        a = self._alpha_cumprod(timesteps, original_samples.device).view(view)
        return (a.sqrt() * original_samples + (1 - a).sqrt() * noise).to(original_samples.dtype)

    def __len__(self) -> int:
        return self.num_train_timesteps
