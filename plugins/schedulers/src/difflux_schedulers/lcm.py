"""Latent Consistency Model sampler (Luo et al. 2023, "Latent Consistency Models", Algorithm 3).

Each step maps the sample to a clean estimate through the consistency boundary condition
``denoised = c_out * x0 + c_skip * x_t`` and re-noises it to the next timestep of the schedule.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput
from difflux.torch_utils import randn_tensor

from . import schedules
from ._base import Generator, TrainedBetas, VPScheduler, custom_array
from .sampling import x0_from_roots_vp

__all__ = ["LCMScheduler", "LCMSchedulerOutput", "lcm_boundary_scalings", "lcm_origin_timesteps"]

logger = logging.getLogger("difflux")


@dataclasses.dataclass
class LCMSchedulerOutput(SchedulerOutput):
    """``prev_sample`` and the consistency estimate of the clean sample (also available as ``denoised``)."""

    @property
    def denoised(self) -> torch.Tensor | None:
        """Diffusers' name for the clean estimate (``pred_original_sample``)."""
        return self.pred_original_sample


def lcm_boundary_scalings(
    timestep: torch.Tensor, timestep_scaling: float, sigma_data: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """``c_skip`` and ``c_out`` of the consistency boundary condition at discrete timesteps (LCM, eq. 4)."""
    t = timestep * timestep_scaling
    c_skip = sigma_data**2 / (t**2 + sigma_data**2)
    c_out = t / (t**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def lcm_origin_timesteps(num_train_timesteps: int, original_steps: int, strength: float = 1.0) -> np.ndarray:
    """The ascending skipping-step schedule the model was distilled on: ``k - 1, 2k - 1, ...`` with ``k = T // N``."""
    k = num_train_timesteps // original_steps
    return np.arange(1, int(original_steps * strength) + 1, dtype=np.int64) * k - 1


class LCMScheduler(VPScheduler):
    """Multistep consistency sampling for latent consistency models (LCM, LCM-LoRA).

    ``set_timesteps`` takes ``original_inference_steps=`` (the distillation schedule length) and
    ``strength=`` (image-to-image) as keyword options, and custom ``timesteps=``.
    ``timestep_spacing`` and ``steps_offset`` are kept for config compatibility; LCM's schedule
    does not use them (as in Diffusers).
    """

    order = 1
    init_noise_sigma: float = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear",
        trained_betas: TrainedBetas = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._init_training_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.custom_timesteps = False
        self._t_list: list[int] = []
        self._scalings: dict[int, tuple[float, float]] = {}
        self._boundary: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        original_inference_steps: int | None = None,
        strength: float = 1.0,
    ) -> None:
        """Pick ``num_inference_steps`` evenly spaced entries of the distillation schedule (or use ``timesteps``)."""
        if sigmas is not None:
            raise ValueError("LCMScheduler.set_timesteps does not take sigmas=; pass num_inference_steps or timesteps=")
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("LCMScheduler.set_timesteps: pass exactly one of num_inference_steps or timesteps=")
        n_train = self.config.num_train_timesteps
        original = original_inference_steps or self.config.original_inference_steps
        if original > n_train:
            raise ValueError(
                f"original_inference_steps={original} is larger than num_train_timesteps={n_train}; "
                "the distillation schedule is a subset of the training timesteps"
            )
        origin = lcm_origin_timesteps(n_train, original, strength)
        if timesteps is not None:
            chosen = self._custom_schedule(
                [int(t) for t in custom_array(timesteps, "timesteps", "LCMScheduler")], origin, original, strength
            )
        else:
            num_inference_steps = self._required_steps(type(self).__name__, num_inference_steps)
            schedules.check_num_inference_steps(num_inference_steps, n_train)
            if len(origin) // num_inference_steps < 1:
                raise ValueError(
                    f"original_inference_steps x strength = {original} x {strength} gives {len(origin)} timesteps, "
                    f"fewer than num_inference_steps={num_inference_steps}; lower num_inference_steps or raise strength"
                )
            if num_inference_steps > original:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} is larger than original_inference_steps={original}; "
                    "LCM samples a subset of the distillation schedule"
                )
            self.num_inference_steps = num_inference_steps
            origin = origin[::-1].copy()
            picks = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
            chosen = origin[picks]
        self.timesteps = torch.from_numpy(chosen).to(device=device, dtype=torch.long)
        self._t_list = [int(t) for t in chosen]
        self._reset_step_state()

    def _step_pairs(self) -> list[tuple[int, int]]:
        for t in self._t_list:
            self._boundary_scalings(t)
        return list(zip(self._t_list, [*self._t_list[1:], self._t_list[-1]]))

    def _custom_schedule(self, ts: list[int], origin: np.ndarray, original: int, strength: float) -> np.ndarray:
        n_train = self.config.num_train_timesteps
        if not ts:
            raise ValueError("LCMScheduler.set_timesteps: timesteps= is empty")
        if any(b >= a for a, b in itertools.pairwise(ts)):
            raise ValueError(f"LCMScheduler.set_timesteps: timesteps= must be strictly descending, got {ts}")
        if ts[0] >= n_train:
            raise ValueError(f"LCMScheduler.set_timesteps: timesteps= must start below num_train_timesteps={n_train}")
        if strength == 1.0 and ts[0] != n_train - 1:
            logger.warning("LCMScheduler: custom timesteps start at %s, not %s", ts[0], n_train - 1)
        off = [t for t in ts[1:] if t not in set(origin.tolist())]
        if off:
            logger.warning("LCMScheduler: custom timesteps %s are not on the distillation schedule", off)
        if len(ts) > original:
            logger.warning("LCMScheduler: %d custom timesteps exceed original_inference_steps=%d", len(ts), original)
        self.num_inference_steps = len(ts)
        self.custom_timesteps = True
        keep = min(int(len(ts) * strength), len(ts))
        return np.asarray(ts, dtype=np.int64)[max(len(ts) - keep, 0) * self.order :]

    def get_scalings_for_boundary_condition_discrete(self, timestep: int | torch.Tensor) -> tuple[float, float]:
        """``(c_skip, c_out)`` at a discrete timestep."""
        t = int(timestep)
        cached = self._scalings.get(t)
        if cached is None:
            c_skip, c_out = lcm_boundary_scalings(torch.tensor(t, dtype=torch.float32), self.config.timestep_scaling)
            cached = self._scalings[t] = (float(c_skip), float(c_out))
        return cached

    def _boundary_scalings(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(c_skip, c_out)`` at timestep ``t`` as 0-dim float32 tensors (cached)."""
        cached = self._boundary.get(t)
        if cached is None:
            scalings = lcm_boundary_scalings(torch.tensor(t, dtype=torch.float32), self.config.timestep_scaling)
            cached = self._boundary[t] = scalings
        return cached

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One consistency step: clean estimate at ``timestep``, then fresh noise to the next timestep
        (none after the last one). ``eta`` is unused."""
        self._require_timesteps()
        i = self._ensure_step_index(timestep)
        cfg = self.config
        t = self._timestep_value(timestep)
        t_prev = self._t_list[i + 1] if i + 1 < len(self._t_list) else t
        _, root_a, root_b = self._roots(t)
        c_skip, c_out = self._boundary_scalings(t)
        x0 = self._clip_or_threshold(x0_from_roots_vp(model_output, sample, root_a, root_b, cfg.prediction_type))
        # Coefficients are exact float32 values, so these products round as Diffusers' tensor maths does.
        denoised = x0 * c_out + sample * c_skip
        if i != self.num_inference_steps - 1:  # type: ignore[operator]
            noise = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=denoised.dtype
            )
            _, root_a_prev, root_b_prev = self._roots(t_prev)
            prev_sample = denoised * root_a_prev + noise * root_b_prev
        else:
            prev_sample = denoised
        self._step_index = i + 1
        if not return_dict:
            return (prev_sample, denoised)
        return LCMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)
