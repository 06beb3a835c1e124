"""UniPC: a unified predictor-corrector multistep solver (Zhao et al. 2023, arXiv:2302.04867).

The predictor (UniP) and corrector (UniC) are pure functions over :class:`~.dpm_solver.NoiseLevel`
points; :class:`UniPCMultistepScheduler` keeps the history and calls them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import numpy as np
import torch
from difflux.config import Bound
from difflux.protocols import Scheduler
from difflux.schedulers import SchedulerMixin, SchedulerOutput

from ._base import TrainedBetas, custom_array
from .dpm_solver import LambdaSolverScheduler, NoiseLevel, _final_sigma, noise_prediction
from .flow_match import shift_sigmas, stretch_shift_to_terminal, time_shift
from .schedules import solver_timesteps

__all__ = ["UniPCMultistepScheduler", "unipc_correct", "unipc_predict", "unipc_system"]

UniPCVariant = Literal["bh1", "bh2"]


def unipc_system(
    h: torch.Tensor, rks: Sequence[torch.Tensor], *, predict_x0: bool, variant: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h phi_1(h), B(h), R, b)`` of UniPC's linear system ``R rho = b`` (Zhao et al. 2023, eq. 8, algorithm 3).

    ``rks`` are the ratios ``r_k = (lambda_k - lambda_s0) / h`` of the earlier points; the
    system has one more row, for ``r = 1``. ``variant`` picks ``B(h) = h`` (bh1) or ``e^h - 1`` (bh2).
    """
    hh = -h if predict_x0 else h
    h_phi_1 = torch.expm1(hh)
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = torch.expm1(hh)
    else:
        raise ValueError(f"unknown UniPC solver_type {variant!r}; choose 'bh1' or 'bh2'")
    r = torch.stack([*rks, torch.ones((), device=h.device, dtype=h.dtype)])
    rows, rhs = [], []
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    for i in range(1, len(r) + 1):
        rows.append(torch.pow(r, i - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return h_phi_1, b_h, torch.stack(rows), torch.stack(rhs)


def _differences(
    m0: torch.Tensor, s0: NoiseLevel, h: torch.Tensor, history: Sequence[tuple[torch.Tensor, NoiseLevel]]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    rks, d1s = [], []
    for output, level in history:
        rk = (level.lam - s0.lam) / h
        rks.append(rk)
        d1s.append((output - m0) / rk)
    return rks, d1s


def _first_order_base(
    x: torch.Tensor, m0: torch.Tensor, s0: NoiseLevel, t: NoiseLevel, h_phi_1: torch.Tensor, predict_x0: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exponential-Euler part of the update and the scale of the correction terms."""
    if predict_x0:
        return t.sigma / s0.sigma * x - t.alpha * h_phi_1 * m0, t.alpha
    return t.alpha / s0.alpha * x - t.sigma * h_phi_1 * m0, t.sigma


def _weighted(rhos: torch.Tensor, terms: Sequence[torch.Tensor]) -> torch.Tensor | float:
    total: torch.Tensor | float = 0.0
    for k, term in enumerate(terms):
        total = total + rhos[k] * term
    return total


def unipc_predict(
    x: torch.Tensor,
    m0: torch.Tensor,
    s0: NoiseLevel,
    t: NoiseLevel,
    history: Sequence[tuple[torch.Tensor, NoiseLevel]],
    *,
    predict_x0: bool,
    variant: str,
) -> torch.Tensor:
    """UniP-p: the order ``len(history) + 1`` predictor from ``s0`` to ``t`` (Zhao et al. 2023, algorithm 3).

    ``history`` holds the earlier (converted) model outputs and their levels, nearest first.
    """
    h = t.lam - s0.lam
    rks, d1s = _differences(m0, s0, h, history)
    h_phi_1, b_h, r, b = unipc_system(h, rks, predict_x0=predict_x0, variant=variant)
    base, scale = _first_order_base(x, m0, s0, t, h_phi_1, predict_x0)
    if not d1s:
        return base.to(x.dtype)
    if len(d1s) == 1:
        rhos = torch.full((1,), 0.5, dtype=x.dtype, device=x.device)
    else:
        rhos = torch.linalg.solve(r[:-1, :-1], b[:-1]).to(device=x.device, dtype=x.dtype)
    return (base - scale * b_h * _weighted(rhos, d1s)).to(x.dtype)


def unipc_correct(
    x: torch.Tensor,
    m0: torch.Tensor,
    s0: NoiseLevel,
    t: NoiseLevel,
    history: Sequence[tuple[torch.Tensor, NoiseLevel]],
    model_t: torch.Tensor,
    *,
    predict_x0: bool,
    variant: str,
) -> torch.Tensor:
    """UniC-p: correct the sample at ``t`` with the new model output ``model_t`` (Zhao et al. 2023, algorithm 2).

    ``x`` is the sample at ``s0``, ``m0`` the model output there, ``history`` the outputs before ``s0``.
    """
    h = t.lam - s0.lam
    rks, d1s = _differences(m0, s0, h, history)
    h_phi_1, b_h, r, b = unipc_system(h, rks, predict_x0=predict_x0, variant=variant)
    base, scale = _first_order_base(x, m0, s0, t, h_phi_1, predict_x0)
    if not d1s:
        rhos = torch.full((1,), 0.5, dtype=x.dtype, device=x.device)
    else:
        rhos = torch.linalg.solve(r, b).to(device=x.device, dtype=x.dtype)
    correction = _weighted(rhos, d1s) + rhos[-1] * (model_t - m0)
    return (base - scale * b_h * correction).to(x.dtype)


class UniPCMultistepScheduler(LambdaSolverScheduler):
    """UniPC multistep: a UniP predictor each step, corrected by UniC once the next model output is known."""

    ignore_for_config = frozenset({"solver_p"})
    #: UniPC's predictor and corrector exist at any order (Diffusers takes any int); the others stop at 3
    config_bounds = {"solver_order": Bound(ge=1, le=16)}

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        trained_betas: TrainedBetas = None,
        solver_order: int = 2,
        prediction_type: Literal["epsilon", "sample", "v_prediction", "flow_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        predict_x0: bool = True,
        solver_type: Literal["bh1", "bh2", "midpoint", "heun", "logrho"] = "bh2",
        lower_order_final: bool = True,
        disable_corrector: list[int] = [],  # noqa: B006 - pydantic copies it; Diffusers' default
        solver_p: SchedulerMixin | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: Literal["zero", "sigma_min"] = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential", "linear"] = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
    ) -> None:
        if solver_order < 1:
            raise ValueError(f"UniPCMultistepScheduler: solver_order must be at least 1, got {solver_order}")
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError("UniPCMultistepScheduler: shift_terminal needs use_flow_sigmas=True")
        if solver_type not in ("bh1", "bh2"):  # the solver names of the other multistep schedulers
            self.register_to_config(solver_type="bh2")
        self._init_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )
        self.predict_x0 = predict_x0
        self.disable_corrector = list(disable_corrector)
        self.solver_p = cast(Scheduler | None, solver_p)

    def _reset_history(self) -> None:
        super()._reset_history()
        self.timestep_list: list[Any] = [None] * int(self.config.solver_order)
        self.last_sample: torch.Tensor | None = None
        self.this_order = 1

    def _flow_sigmas(self, sigmas: Sequence[float] | torch.Tensor | None, n: int, mu: float | None) -> np.ndarray:
        config = self.config
        name = type(self).__name__
        if sigmas is None:
            sig = np.linspace(1, 1 / config.num_train_timesteps, n + 1)[:-1]
        else:
            sig = custom_array(sigmas, "sigmas", name)
        if config.use_dynamic_shifting:
            if mu is None:
                raise ValueError(f"{name}.set_timesteps: pass mu= when use_dynamic_shifting=True")
            sig = time_shift(mu, 1.0, sig, config.time_shift_type)
        else:
            sig = shift_sigmas(sig, config.flow_shift)
        if config.shift_terminal:
            sig = stretch_shift_to_terminal(sig, config.shift_terminal)
        if np.fabs(sig[0] - 1) < 1e-6:
            sig[0] -= 1e-6
        return np.asarray(sig)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        mu: float | None = None,
    ) -> None:
        """Build the inference schedule; custom ``sigmas`` (flow sigmas only) and ``mu`` (dynamic shifting)."""
        config = self.config
        name = type(self).__name__
        if timesteps is not None:
            raise ValueError(f"{name}.set_timesteps does not take custom timesteps=; pass num_inference_steps")
        if config.use_dynamic_shifting and mu is None:
            raise ValueError(f"{name}.set_timesteps: pass mu= when use_dynamic_shifting=True")
        if sigmas is not None:
            if not config.use_flow_sigmas:
                raise ValueError(f"{name}.set_timesteps: custom sigmas= need use_flow_sigmas=True")
            if self._uses_sigma_schedule():
                raise ValueError(f"{name}: custom sigmas= cannot be combined with karras / exponential / beta sigmas")
            if len(sigmas) < 1:
                raise ValueError(f"{name}.set_timesteps: sigmas= is empty")
            n = len(sigmas)
        else:
            n = self._check_steps(num_inference_steps)
        if config.final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"unknown final_sigmas_type {config.final_sigmas_type!r}; choose 'zero' or 'sigma_min'")
        steps = solver_timesteps(n, config.num_train_timesteps, config.timestep_spacing, config.steps_offset)
        flow_sigmas = self._flow_sigmas(sigmas, n, mu) if self._flow else None
        steps, sig = self._solver_schedule(steps, n, flow_sigmas=flow_sigmas)
        if self._uses_sigma_schedule() or self._flow:
            final = float(sig[-1]) if config.final_sigmas_type == "sigma_min" else 0.0
        else:
            final = _final_sigma(self.alphas_cumprod, config.final_sigmas_type)
        self._install_schedule(steps, sig, final, device)
        if self.solver_p is not None:
            self.solver_p.set_timesteps(self.num_inference_steps, device=device)

    def _ramp_schedule(self, ramp: np.ndarray, log_sigmas: np.ndarray, rounding: bool) -> tuple[np.ndarray, np.ndarray]:
        if self.config.use_karras_sigmas and self._flow:  # Karras sigmas mapped onto the flow path
            sig = ramp / (ramp + 1)
            return sig * self.config.num_train_timesteps, sig
        return super()._ramp_schedule(ramp, log_sigmas, rounding)

    def _convert(self, model_output: torch.Tensor, sample: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        return (
            self._to_data(model_output, sample, level)
            if self.predict_x0
            else self._to_noise_plain(model_output, sample, level)
        )

    def _to_noise_plain(self, model_output: torch.Tensor, sample: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        """UniPC's noise mode does not threshold."""
        return noise_prediction(model_output, sample, level, str(self.config.prediction_type))

    def _history(self, newest_index: int, order: int, device: torch.device) -> list[tuple[torch.Tensor, NoiseLevel]]:
        """The ``order - 1`` outputs before the newest one (nearest first), with their levels."""
        out = []
        for k in range(1, order):
            output = self.model_outputs[-(k + 1)]
            if output is None:
                raise RuntimeError(
                    f"{type(self).__name__}: step {newest_index} needs {order - 1} earlier model outputs"
                )
            out.append((output, self._level(newest_index - k, device)))
        return out

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
        """Correct ``sample`` with UniC (from the previous step), then predict the next sample with UniP."""
        self._require_timesteps()
        config = self.config
        i = self._ensure_step_index(timestep)
        device = sample.device
        variant = str(config.solver_type)
        level = self._level(i, device)
        converted = self._convert(model_output, sample, level)

        use_corrector = i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None
        last_output = self.model_outputs[-1]
        if use_corrector and last_output is not None and self.last_sample is not None:
            history = self._history(i - 1, self.this_order, device)
            sample = unipc_correct(
                self.last_sample,
                last_output,
                self._level(i - 1, device),
                level,
                history,
                converted,
                predict_x0=self.predict_x0,
                variant=variant,
            )

        self._push(converted)
        self.timestep_list = [*self.timestep_list[1:], timestep]
        order = int(config.solver_order)
        if config.lower_order_final:
            order = min(order, len(self.timesteps) - i)
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        if self.solver_p is not None:
            prev = self.solver_p.step(model_output, self.timestep_list[-1], sample, return_dict=False)[0]
        else:
            prev = unipc_predict(
                sample,
                converted,
                level,
                self._level(i + 1, device),
                self._history(i, self.this_order, device),
                predict_x0=self.predict_x0,
                variant=variant,
            )
        self._advance(i)
        return self._output(prev, None, return_dict)
