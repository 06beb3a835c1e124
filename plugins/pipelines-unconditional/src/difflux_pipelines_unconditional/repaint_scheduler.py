"""RePaintScheduler: DDIM-style steps that keep the known pixels, with resampling jumps (Lugmayr et al. 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerMixin, SchedulerOutput
from difflux.torch_utils import randn_tensor
from difflux_schedulers import sampling, schedules

__all__ = ["RePaintScheduler", "repaint_timesteps"]


def repaint_timesteps(num_inference_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The RePaint schedule in inference-step units: walk down one step at a time, and at every
    ``jump_length``-th step (``jump_n_sample - 1`` times each) walk back up ``jump_length`` steps.

    (Lugmayr et al. 2022, Algorithm 1 and sec. 4.2.)
    """
    jumps_left = {j: jump_n_sample - 1 for j in range(0, num_inference_steps - jump_length, jump_length)}
    steps: list[int] = []
    t = num_inference_steps
    while t >= 1:
        t -= 1
        steps.append(t)
        if jumps_left.get(t, 0) > 0:
            jumps_left[t] -= 1
            for _ in range(jump_length):
                t += 1
                steps.append(t)
    return steps


class RePaintScheduler(SchedulerMixin):
    """Inpainting sampler: each step denoises the unknown region (DDIM with ``eta``) and re-noises the
    known region from the original image; :meth:`undo_step` walks back up the chain (resampling).

    ``step(model_output, t, sample)`` without ``original_image``/``mask`` is a plain DDIM step.
    """

    order: ClassVar[int] = 1

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"] = "linear",
        eta: float = 0.0,
        trained_betas: Sequence[float] | None = None,
        clip_sample: bool = True,
    ) -> None:
        self.betas = schedules.make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = schedules.alphas_cumprod_from_betas(self.betas)
        self.final_alpha_cumprod = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(num_train_timesteps)[::-1].copy())
        #: the DDIM ``eta`` of the next steps (the pipeline sets it per call)
        self.eta = eta
        self._known_timesteps: frozenset[int] = frozenset()
        self._begin_index: int | None = None
        self._step_index: int | None = None

    # -- the schedule ---------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """``num_inference_steps`` DDIM steps with resampling jumps of ``jump_length``, ``jump_n_sample - 1`` times."""
        if timesteps is not None or sigmas is not None:
            raise ValueError("RePaintScheduler.set_timesteps takes neither timesteps= nor sigmas=")
        if num_inference_steps is None:
            raise ValueError("RePaintScheduler.set_timesteps: pass num_inference_steps")
        schedules.check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
        if jump_length < 1 or jump_n_sample < 1:
            raise ValueError(
                f"RePaintScheduler: jump_length and jump_n_sample must be >= 1, got {jump_length}, {jump_n_sample}"
            )
        self.num_inference_steps = num_inference_steps
        stride = self.config.num_train_timesteps // num_inference_steps
        steps = np.array(repaint_timesteps(num_inference_steps, jump_length, jump_n_sample)) * stride
        self.timesteps = torch.from_numpy(steps).to(device)
        self._known_timesteps = frozenset(int(t) for t in steps)
        self._begin_index = None
        self._step_index = None

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    @property
    def step_index(self) -> int | None:
        """``step`` calls so far, counted from the begin index (or the first timestep's position)."""
        return self._step_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at ``timesteps[begin_index]`` (the scheduler contract; RePaint's own loop starts at 0).

        :raises ValueError: if ``begin_index`` is not an index into ``timesteps``.
        """
        size = len(self.timesteps)
        if isinstance(begin_index, bool) or not isinstance(begin_index, int) or not 0 <= begin_index < max(size, 1):
            raise ValueError(
                f"RePaintScheduler.set_begin_index: begin_index={begin_index!r} is outside the schedule of {size} "
                "timesteps; pass an index into scheduler.timesteps"
            )
        self._begin_index = begin_index

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The model takes the sample unscaled."""
        return sample

    def _stride(self) -> int:
        if self.num_inference_steps is None:
            raise RuntimeError("RePaintScheduler: no schedule yet; call set_timesteps(num_inference_steps) first")
        return int(self.config.num_train_timesteps // self.num_inference_steps)

    def _alpha_prev(self, prev_timestep: int) -> torch.Tensor:
        return self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod

    # -- stepping -------------------------------------------------------------------------------

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        original_image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        eta: float | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One step down: DDIM in the unknown region (``mask == 0``), the re-noised original where ``mask == 1``.

        ``eta`` defaults to :attr:`eta`. Noise for the known region is drawn on every step.
        """
        t = int(timestep)
        stride = self._stride()
        if t not in self._known_timesteps:
            raise ValueError(
                f"RePaintScheduler: timestep {t} is not in the schedule set by set_timesteps; pass one of "
                "scheduler.timesteps"
            )
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.timesteps.tolist().index(t)
        self._step_index += 1
        eta = self.eta if eta is None else eta
        alpha_t = self.alphas_cumprod[t]
        alpha_prev = self._alpha_prev(t - stride)
        x0 = (sample - (1 - alpha_t) ** 0.5 * model_output) / alpha_t**0.5
        if self.config.clip_sample:
            x0 = x0.clamp(-1, 1)
        noise = randn_tensor(
            model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
        )
        std_dev_t = eta * sampling.ddim_variance(alpha_t, alpha_prev) ** 0.5
        unknown: Any = sampling.ddim_step(x0, model_output, alpha_prev, std_dev_t)
        if t > 0 and eta > 0:
            unknown = unknown + std_dev_t * noise
        if original_image is None or mask is None:
            prev = unknown
        else:
            known = alpha_prev**0.5 * original_image + (1 - alpha_prev) ** 0.5 * noise
            prev = mask * known + (1.0 - mask) * unknown
        if not return_dict:
            return (prev, x0)
        return SchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def undo_step(
        self,
        sample: torch.Tensor,
        timestep: int | torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Walk back up from ``timestep`` by one inference step: ``stride`` forward-diffusion steps q(x_t | x_{t-1})."""
        start = int(timestep)
        for i in range(self._stride()):
            beta = self.betas[start + i]
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            sample = (1 - beta) ** 0.5 * sample + beta**0.5 * noise
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion to ``timesteps`` (the DDPM training objective RePaint models use)."""
        return sampling.add_noise_vp(original_samples, noise, self.alphas_cumprod, timesteps)

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)
