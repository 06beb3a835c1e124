"""VQ-Diffusion's discrete mask-and-replace sampler (Gu et al. 2022, "Vector Quantized Diffusion Model
for Text-to-Image Synthesis", arXiv:2111.14822, sec. 3.2 and appendix A).

The sample is a grid of codebook indices ``(batch, pixels)``; class ``K`` (the last one) is the
mask token. The forward process keeps a token with probability ``a_t``, replaces it by any of the
``K`` codes with ``b_t`` each, and masks it with ``c_t``; ``a`` falls and the mask probability
rises linearly in the cumulative products (``alpha_cum_start`` → ``alpha_cum_end``,
``gamma_cum_start`` → ``gamma_cum_end``). A step takes the model's ``log p(x_0 | x_t)``
``(batch, K, pixels)``, forms the posterior ``log p(x_{t-1} | x_t)`` ``(batch, K + 1, pixels)``
(eq. 11) and draws from it with the Gumbel-max trick. All maths are in log space.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput

from ._base import BaseScheduler, Generator

__all__ = [
    "VQDiffusionScheduler",
    "VQDiffusionSchedulerOutput",
    "gumbel_sample",
    "log_onehot",
    "mask_and_replace_schedule",
]

VQDiffusionSchedulerOutput = SchedulerOutput


def mask_and_replace_schedule(
    num_train_timesteps: int,
    num_classes: int,
    alpha_cum_start: float,
    alpha_cum_end: float,
    gamma_cum_start: float,
    gamma_cum_end: float,
) -> dict[str, torch.Tensor]:
    """Log transition probabilities of the mask-and-replace process, float32 (computed in float64).

    ``log_at`` / ``log_bt`` / ``log_ct`` ``(T,)``: one step's keep / replace-by-one-code / mask;
    ``log_cumprod_*`` ``(T + 1,)``: the same from ``x_0`` to step ``t`` (index ``T``: nothing changed).
    ``num_classes`` counts the mask token.
    """
    codes = num_classes - 1
    ramp = np.arange(num_train_timesteps) / (num_train_timesteps - 1)
    keep_cum = alpha_cum_start + ramp * (alpha_cum_end - alpha_cum_start)
    mask_cum = gamma_cum_start + ramp * (gamma_cum_end - gamma_cum_start)
    keep = keep_cum / np.concatenate(([1.0], keep_cum[:-1]))
    mask = 1 - (1 - mask_cum) / np.concatenate(([1.0], 1 - mask_cum[:-1]))
    keep_cum = np.concatenate((keep_cum, [1.0]))
    mask_cum = np.concatenate((mask_cum, [0.0]))
    table = {
        "log_at": keep,
        "log_bt": (1 - keep - mask) / codes,
        "log_ct": mask,
        "log_cumprod_at": keep_cum,
        "log_cumprod_bt": (1 - keep_cum - mask_cum) / codes,
        "log_cumprod_ct": mask_cum,
    }
    return {name: torch.log(torch.from_numpy(values.astype(np.float64))).float() for name, values in table.items()}


def log_onehot(indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``log`` of the one-hot encoding of ``indices`` ``(batch, pixels)`` as ``(batch, num_classes, pixels)``;
    zeros become ``log(1e-30)``."""
    onehot = torch.nn.functional.one_hot(indices, num_classes).permute(0, 2, 1)
    return torch.log(onehot.float().clamp(min=1e-30))


def gumbel_sample(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per position from the categorical ``softmax(logits)`` over axis 1 (the Gumbel-max trick)."""
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device)
    gumbel = -torch.log(-torch.log(uniform + 1e-30) + 1e-30)
    return (logits + gumbel).argmax(dim=1)


class VQDiffusionScheduler(BaseScheduler):
    """The VQ-Diffusion sampler; config keys as Diffusers' ``VQDiffusionScheduler``.

    ``num_vec_classes``: codebook size plus one (the mask token). ``set_timesteps(n)`` gives
    ``n - 1, ..., 0`` (the first ``n`` training steps, as the published pipeline runs them).
    ``step(model_output, timestep, sample, generator)``: ``model_output`` is ``log p(x_0 | x_t)``
    ``(batch, num_vec_classes - 1, pixels)`` float, ``sample`` the int64 indices ``(batch, pixels)``;
    returns the indices at ``timestep - 1``.
    """

    _compatibles: ClassVar[tuple[str, ...]] = ("VQDiffusionScheduler",)
    order: ClassVar[int] = 1

    def __init__(
        self,
        num_vec_classes: int,
        num_train_timesteps: int = 100,
        alpha_cum_start: float = 0.99999,
        alpha_cum_end: float = 0.000009,
        gamma_cum_start: float = 0.000009,
        gamma_cum_end: float = 0.99999,
    ) -> None:
        if num_vec_classes < 2 or num_train_timesteps < 2:
            raise ValueError(
                "VQDiffusionScheduler: num_vec_classes (codes + mask) and num_train_timesteps must be at least 2, "
                f"got {num_vec_classes} and {num_train_timesteps}"
            )
        self.num_embed = num_vec_classes
        self.mask_class = num_vec_classes - 1
        schedule = mask_and_replace_schedule(
            num_train_timesteps, num_vec_classes, alpha_cum_start, alpha_cum_end, gamma_cum_start, gamma_cum_end
        )
        for name, values in schedule.items():
            setattr(self, name, values)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        """``num_inference_steps - 1, ..., 0`` (at most ``num_train_timesteps``)."""
        self._check_set_timesteps_args(
            num_inference_steps, timesteps, sigmas, accepts_timesteps=False, accepts_sigmas=False
        )
        n = self._required_steps(type(self).__name__, num_inference_steps)
        self.num_inference_steps = n
        self.timesteps = torch.arange(n - 1, -1, -1, device=device)
        for name in ("log_at", "log_bt", "log_ct", "log_cumprod_at", "log_cumprod_bt", "log_cumprod_ct"):
            setattr(self, name, getattr(self, name).to(device))
        self._reset_step_state()

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The model takes the indices as they are."""
        return sample

    def _transition(self, t: int, x_t: torch.Tensor, log_x_t: torch.Tensor, cumulative: bool) -> torch.Tensor:
        """``log q(x_t | x_0 = k)`` over the codes ``k`` (cumulative) or ``log q(x_t | x_{t-1} = k)`` over the codes
        and the mask (one step), for each position: ``(batch, K, pixels)`` / ``(batch, K + 1, pixels)``."""
        prefix = "log_cumprod_" if cumulative else "log_"
        a, b, c = (typing.cast(torch.Tensor, getattr(self, f"{prefix}{k}t"))[t] for k in "abc")
        log_q: torch.Tensor = (log_x_t[:, :-1, :] + a).logaddexp(b)
        masked = (x_t == self.mask_class).unsqueeze(1).expand_as(log_q)
        log_q = log_q.masked_fill(masked, float(c))
        if cumulative:
            return log_q
        return torch.cat((log_q, log_x_t[:, -1:, :]), dim=1)

    def q_posterior(self, log_p_x_0: torch.Tensor, x_t: torch.Tensor, t: int) -> torch.Tensor:
        """``log p(x_{t-1} | x_t)`` ``(batch, K + 1, pixels)`` from the model's ``log p(x_0 | x_t)`` (eq. 11),
        unnormalised."""
        log_x_t = log_onehot(x_t, self.num_embed)
        q = log_p_x_0 - self._transition(t, x_t, log_x_t, cumulative=True)
        norm = torch.logsumexp(q, dim=1, keepdim=True)
        q = q - norm
        a, b, c = self.log_cumprod_at[t - 1], self.log_cumprod_bt[t - 1], self.log_cumprod_ct[t - 1]
        q = torch.cat(((q + a).logaddexp(b), c.expand(q.shape[0], 1, q.shape[2])), dim=1)
        return q + self._transition(t, x_t, log_x_t, cumulative=False) + norm

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
        **_: object,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """Draw ``x_{t-1}`` ``(batch, pixels)`` int64 (at ``timestep`` 0, ``x_0`` from ``model_output`` itself).

        :raises ValueError: for a ``model_output`` not shaped ``(batch, num_vec_classes - 1, pixels)``.
        """
        self._require_timesteps()
        t = self._timestep_value(timestep)
        codes = self.num_embed - 1
        if model_output.ndim != 3 or model_output.shape[1] != codes or model_output.shape[2] != sample.shape[-1]:
            raise ValueError(
                f"VQDiffusionScheduler.step: model_output must be (batch, {codes}, {sample.shape[-1]}) "
                f"log-probabilities of the codes, got {tuple(model_output.shape)}"
            )
        if not 0 <= t < self.log_at.shape[0]:
            raise ValueError(f"VQDiffusionScheduler.step: timestep {t} is outside 0..{self.log_at.shape[0] - 1}")
        if isinstance(generator, Sequence):
            raise TypeError("VQDiffusionScheduler.step takes one generator (it draws the whole batch at once)")
        log_p = model_output if t == 0 else self.q_posterior(model_output, sample, t)
        index = self._ensure_step_index(timestep)
        self._step_index = index + 1
        return self._output(gumbel_sample(log_p, generator), None, return_dict)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Draw ``x_t ~ q(x_t | x_0)`` for code indices ``original_samples`` ``(batch, pixels)`` at ``timesteps``
        ``(batch,)`` (the forward mask-and-replace process, eq. 4).

        ``noise``: uniform draws in ``[0, 1)`` shaped ``(batch, num_vec_classes, pixels)``, turned into Gumbel
        noise for the draw (so a seeded ``torch.rand`` makes it reproducible). Returns int64 indices.
        """
        steps = torch.as_tensor(timesteps, device=original_samples.device).reshape(-1).long()
        steps = steps.expand(original_samples.shape[0]) if steps.numel() == 1 else steps
        view = (-1, 1, 1)
        a = self.log_cumprod_at.to(original_samples.device)[steps].view(view)
        b = self.log_cumprod_bt.to(original_samples.device)[steps].view(view)
        c = self.log_cumprod_ct.to(original_samples.device)[steps].view(view)
        log_x0 = log_onehot(original_samples, self.num_embed)
        codes = (log_x0[:, :-1] + a).logaddexp(b)
        mask = (log_x0[:, -1:] + torch.log1p(-c.exp())).logaddexp(c)  # a mask token stays masked
        log_q = torch.cat((codes, mask), dim=1)
        gumbel = -torch.log(-torch.log(noise.to(log_q) + 1e-30) + 1e-30)
        return (log_q + gumbel).argmax(dim=1)

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)
