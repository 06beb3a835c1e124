"""DEIS: diffusion exponential integrator sampler, log-rho multistep variant (Zhang & Chen 2022, arXiv:2204.13902).

The noise prediction is extrapolated by a Lagrange polynomial in ``log rho`` (``rho = sigma / alpha``)
and integrated exactly; :class:`DEISMultistepScheduler` keeps the history and calls the pure update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerOutput

from ._base import TrainedBetas
from .dpm_solver import LambdaSolverScheduler, NoiseLevel, _final_sigma, dpm_solver_step
from .schedules import solver_timesteps

__all__ = ["DEISMultistepScheduler", "deis_step"]


def _log(x: torch.Tensor) -> torch.Tensor:
    """Natural log in numpy float32, as the reference implementation does.

    The coefficients are differences of nearly equal antiderivatives, so a one-ulp change in a
    log shows in the samples; numpy's log keeps them bit-identical to Diffusers'.
    """
    return torch.as_tensor(np.log(x.detach().cpu().numpy()), device=x.device)


def _integral_2(t: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Antiderivative in rho of the linear Lagrange basis through log b (1) and log c (0)."""
    return t * (-_log(c) + _log(t) - 1) / (_log(b) - _log(c))


def _integral_3(t: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Antiderivative in rho of the quadratic Lagrange basis through log b (1), log c and log d (0)."""
    lt, lc, ld = _log(t), _log(c), _log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((_log(b) - lc) * (_log(b) - ld))


def deis_step(
    sample: torch.Tensor, outputs: Sequence[torch.Tensor], levels: Sequence[NoiseLevel], t: NoiseLevel
) -> torch.Tensor:
    """One log-rho AB-DEIS step from the newest level to ``t`` (Zhang & Chen 2022, eq. 15, orders 1-3).

    ``outputs`` (noise predictions) and ``levels`` run oldest to newest.
    """
    s0, m0 = levels[-1], outputs[-1]
    if len(outputs) == 1:
        return dpm_solver_step(sample, [m0], s0, t, algorithm="dpmsolver")
    rho_t, rho_0 = t.sigma / t.alpha, s0.sigma / s0.alpha
    rho_1 = levels[-2].sigma / levels[-2].alpha
    m1 = outputs[-2]
    if len(outputs) == 2:
        coef1 = _integral_2(rho_t, rho_0, rho_1) - _integral_2(rho_0, rho_0, rho_1)
        coef2 = _integral_2(rho_t, rho_1, rho_0) - _integral_2(rho_0, rho_1, rho_0)
        return t.alpha * (sample / s0.alpha + coef1 * m0 + coef2 * m1)
    rho_2 = levels[-3].sigma / levels[-3].alpha
    m2 = outputs[-3]
    coef1 = _integral_3(rho_t, rho_0, rho_1, rho_2) - _integral_3(rho_0, rho_0, rho_1, rho_2)
    coef2 = _integral_3(rho_t, rho_1, rho_2, rho_0) - _integral_3(rho_0, rho_1, rho_2, rho_0)
    coef3 = _integral_3(rho_t, rho_2, rho_0, rho_1) - _integral_3(rho_0, rho_2, rho_0, rho_1)
    return t.alpha * (sample / s0.alpha + coef1 * m0 + coef2 * m1 + coef3 * m2)


class DEISMultistepScheduler(LambdaSolverScheduler):
    """DEIS multistep (log-rho, orders 1-3)."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        trained_betas: TrainedBetas = None,
        solver_order: Literal[1, 2, 3] = 2,
        prediction_type: Literal["epsilon", "sample", "v_prediction", "flow_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: Literal["deis", "dpmsolver", "dpmsolver++"] = "deis",
        solver_type: Literal["logrho", "midpoint", "heun", "bh1", "bh2"] = "logrho",
        lower_order_final: bool = True,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ) -> None:
        if algorithm_type != "deis":  # the DPM-Solver names, from a swapped-in config
            self.register_to_config(algorithm_type="deis")
        if solver_type != "logrho":
            self.register_to_config(solver_type="logrho")
        self._init_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        mu: float | None = None,
    ) -> None:
        """Build the inference schedule (``mu`` with ``use_dynamic_shifting`` sets ``flow_shift = exp(mu)``)."""
        config = self.config
        self._check_set_timesteps_args(
            num_inference_steps, timesteps, sigmas, accepts_timesteps=False, accepts_sigmas=False
        )
        self._apply_mu(mu)
        n = self._check_steps(num_inference_steps)
        steps = solver_timesteps(n, config.num_train_timesteps, config.timestep_spacing, config.steps_offset)
        steps, sig = self._solver_schedule(steps, n)
        interpolated = not (self._uses_sigma_schedule() or self._flow)
        final = _final_sigma(self.alphas_cumprod, "sigma_min") if interpolated else float(sig[-1])
        self._install_schedule(steps, sig, final, device)

    def _to_deis_noise(self, model_output: torch.Tensor, sample: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        """The noise prediction, through the (optionally thresholded) clean-sample prediction."""
        return (sample - level.alpha * self._to_data(model_output, sample, level)) / level.sigma

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One DEIS step; lower orders while the history fills up and (if configured) at the end."""
        self._require_timesteps()
        config = self.config
        i = self._ensure_step_index(timestep)
        device = sample.device
        n = len(self.timesteps)
        few = config.lower_order_final and n < 15
        converted = self._to_deis_noise(model_output, sample, self._level(i, device))
        self._push(converted)
        order = self._multistep_order(i == n - 1 and few, i == n - 2 and few)
        outputs, levels = self._recent(order, i, device)
        prev = deis_step(sample, outputs, levels, self._level(i + 1, device))
        self._advance(i)
        return self._output(prev, None, return_dict)
