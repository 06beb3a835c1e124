"""Flow-matching Euler sampler (rectified flow, as used by SD3 / Flux).

The model predicts a velocity ``v = noise - x0`` along the straight path
``x_sigma = (1 - sigma) * x0 + sigma * noise``; a step is one Euler step in sigma.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput
from difflux.torch_utils import randn_tensor

from . import schedules
from ._base import BaseScheduler, Generator, custom_array
from .sampling import broadcast_to

__all__ = [
    "FlowMatchEulerDiscreteScheduler",
    "calculate_shift",
    "flow_match_euler_step",
    "flow_match_stochastic_step",
    "shift_sigmas",
    "stretch_shift_to_terminal",
    "time_shift",
]


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Static resolution shift of SD3 (Esser et al. 2024, eq. 23): ``s * t / (1 + (s - 1) t)``."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def time_shift(
    mu: float, power: float, t: np.ndarray, kind: Literal["exponential", "linear"] = "exponential"
) -> np.ndarray:
    """Resolution-dependent shift of Flux: ``e^mu / (e^mu + (1/t - 1)^power)`` (or ``mu`` for ``linear``)."""
    scale = math.exp(mu) if kind == "exponential" else mu
    return scale / (scale + (1 / t - 1) ** power)


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """``mu`` for dynamic shifting: linear in the image token count between ``base_shift`` and ``max_shift``."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


def stretch_shift_to_terminal(t: np.ndarray, shift_terminal: float) -> np.ndarray:
    """Rescale a shifted schedule so that its last value is ``shift_terminal`` (LTX-Video)."""
    one_minus = 1 - t
    if one_minus[-1] == 0:  # a one-step schedule (or all sigmas 1): nothing to stretch, and 0 / 0 would be NaN
        return np.asarray(t)
    scale = one_minus[-1] / (1 - shift_terminal)
    return np.asarray(1 - one_minus / scale)


def flow_match_euler_step(
    sample: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float
) -> torch.Tensor:
    """Euler step of the flow ODE ``dx/dsigma = v``: ``x + (sigma_next - sigma) * v``."""
    return torch.add(sample, velocity, alpha=sigma_next - sigma)


def flow_match_stochastic_step(
    sample: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float, noise: torch.Tensor
) -> torch.Tensor:
    """Predict ``x0 = x - sigma v`` and re-noise it to ``sigma_next`` with fresh noise."""
    x0 = torch.add(sample, velocity, alpha=-sigma)
    return x0.mul_(1.0 - sigma_next).add_(noise, alpha=sigma_next)


class FlowMatchEulerDiscreteScheduler(BaseScheduler):
    """Euler sampler for flow-matching models, with static (``shift``) or dynamic (``mu``) timestep shifting.

    ``set_timesteps(..., mu=)`` is required when ``use_dynamic_shifting`` is on (see :func:`calculate_shift`).
    ``step`` takes ``per_token_timesteps=`` for models that denoise tokens at different levels.
    """

    order = 1
    init_noise_sigma: float = 1.0

    _steps_on_training_schedule = True
    _sigma_list: list[float]

    def _prepare_training_schedule(self) -> None:
        """Step on the fresh training sigmas, down to 0 after the last."""
        if not self._sigma_list:
            self._sigma_list = [*self.sigmas.tolist(), 0.0]

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: Literal["exponential", "linear"] = "exponential",
        stochastic_sampling: bool = False,
    ) -> None:
        self._check_one_sigma_ramp()
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be at least 1, got {num_train_timesteps}")
        t = torch.linspace(1, num_train_timesteps, num_train_timesteps, dtype=torch.float32).flip(0)
        sigmas = t / num_train_timesteps
        if not use_dynamic_shifting:
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self._shift = shift
        self.timesteps: torch.Tensor = sigmas * num_train_timesteps
        self.sigmas: torch.Tensor = sigmas
        self.sigma_min: float = sigmas[-1].item()
        self.sigma_max: float = sigmas[0].item()
        self.num_inference_steps = None
        self._sigma_list = []

    # -- state ----------------------------------------------------------------------------

    @property
    def shift(self) -> float:
        """The static shift used by the next ``set_timesteps`` (see :meth:`set_shift`)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        """Change the static shift without rebuilding the scheduler."""
        self._shift = shift

    # -- schedule -------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[float] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        mu: float | None = None,
    ) -> None:
        """Build the sampling schedule: ``num_inference_steps`` evenly spaced sigmas, or custom ``sigmas`` /
        ``timesteps``, then shifted (statically, or with ``mu`` under dynamic shifting) and optionally
        re-spaced as Karras / exponential / beta sigmas."""
        cfg = self.config
        n_train = cfg.num_train_timesteps
        if cfg.use_dynamic_shifting and mu is None:
            raise ValueError(
                "FlowMatchEulerDiscreteScheduler: pass mu= to set_timesteps when use_dynamic_shifting=True"
            )
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ValueError(f"sigmas ({len(sigmas)}) and timesteps ({len(timesteps)}) must have the same length")
        if num_inference_steps is None:
            if sigmas is None and timesteps is None:
                raise ValueError("set_timesteps needs num_inference_steps, sigmas or timesteps")
            num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)  # type: ignore[arg-type]
        elif (sigmas is not None and len(sigmas) != num_inference_steps) or (
            timesteps is not None and len(timesteps) != num_inference_steps
        ):
            raise ValueError("sigmas / timesteps must have num_inference_steps entries when both are given")
        schedules.check_num_inference_steps(num_inference_steps, n_train)
        self.num_inference_steps = num_inference_steps

        name = type(self).__name__
        custom_t = None if timesteps is None else custom_array(timesteps, "timesteps", name).astype(np.float32)
        if sigmas is not None:
            s = custom_array(sigmas, "sigmas", name).astype(np.float32)
        else:
            t = custom_t
            if t is None:
                t = np.linspace(self.sigma_max * n_train, self.sigma_min * n_train, num_inference_steps)
            s = t / n_train
        if cfg.use_dynamic_shifting:
            s = time_shift(float(mu), 1.0, s, cfg.time_shift_type)  # type: ignore[arg-type]
        else:
            s = shift_sigmas(s, self._shift)
        if cfg.shift_terminal:
            s = stretch_shift_to_terminal(s, cfg.shift_terminal)
        if cfg.use_karras_sigmas:
            s = schedules.karras_sigmas(float(s[-1]), float(s[0]), num_inference_steps)
        elif cfg.use_exponential_sigmas:
            s = schedules.exponential_sigmas(float(s[-1]), float(s[0]), num_inference_steps)
        elif cfg.use_beta_sigmas:
            s = schedules.beta_sigmas(float(s[-1]), float(s[0]), num_inference_steps)

        sig = torch.from_numpy(np.ascontiguousarray(s)).to(dtype=torch.float32, device=device)
        ts = sig * n_train if custom_t is None else torch.from_numpy(custom_t).to(device=device)
        if cfg.invert_sigmas:
            sig = 1.0 - sig
            ts = sig * n_train
            sig = torch.cat([sig, torch.ones(1, device=sig.device)])
        else:
            sig = torch.cat([sig, torch.zeros(1, device=sig.device)])
        self.timesteps = ts
        self.sigmas = sig.cpu()
        self._sigma_list = self.sigmas.tolist()
        self._reset_step_state()

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching models take the sample unscaled."""
        return sample

    def scale_noise(self, sample: torch.Tensor, timestep: float | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process ``sigma * noise + (1 - sigma) * sample`` at ``timestep`` (one per batch element)."""
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1)
        sigma = broadcast_to(self._sigmas_at(t, sample), sample)
        return sigma * noise + (1.0 - sigma) * sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`scale_noise` (the protocol's name for the forward process)."""
        return self.scale_noise(original_samples, timesteps, noise)

    # -- stepping -------------------------------------------------------------------------

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Generator = None,
        per_token_timesteps: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One Euler step from ``timestep`` to the next sigma (``eta`` is unused; noise only with
        ``stochastic_sampling``)."""
        self._require_timesteps()
        self._reject_integer_timestep(timestep)
        i = self._ensure_step_index(timestep)
        sample = sample.to(torch.float32)
        if per_token_timesteps is not None:
            prev_sample = self._per_token_step(model_output, sample, per_token_timesteps, generator)
        else:
            sigma, sigma_next = self._sigma_list[i], self._sigma_list[i + 1]
            if self.config.stochastic_sampling:
                noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
                prev_sample = flow_match_stochastic_step(sample, model_output, sigma, sigma_next, noise)
            else:
                prev_sample = flow_match_euler_step(sample, model_output, sigma, sigma_next)
            prev_sample = prev_sample.to(model_output.dtype)
        self._step_index = i + 1
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)

    def _per_token_step(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        per_token_timesteps: torch.Tensor,
        generator: Generator,
    ) -> torch.Tensor:
        token_sigmas = per_token_timesteps / self.config.num_train_timesteps
        schedule = self.sigmas[:, None, None]
        below = schedule < token_sigmas[None] - 1e-6
        next_sigma = (below * schedule).max(dim=0).values[..., None]
        sigma = token_sigmas[..., None]
        if self.config.stochastic_sampling:
            x0 = sample - sigma * model_output
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            out: torch.Tensor = (1.0 - next_sigma) * x0 + next_sigma * noise
            return out
        # Diffusers' per-token convention: the step runs along +v (sigma - next_sigma > 0).
        out = sample + (sigma - next_sigma) * model_output
        return out
