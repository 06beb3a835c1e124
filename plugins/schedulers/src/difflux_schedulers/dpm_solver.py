"""DPM-Solver and DPM-Solver++: exponential integrators of the diffusion ODE/SDE in log-SNR time.

Lu et al. 2022, "DPM-Solver" (arXiv:2206.00927) and "DPM-Solver++" (arXiv:2211.01095). The maths
are small pure functions over :class:`NoiseLevel` points; the scheduler classes hold the schedule
and the history of model outputs and call them. UniPC and DEIS build on the same pieces.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
from difflux.schedulers import SchedulerMixin, SchedulerOutput
from difflux.torch_utils import randn_tensor

from ._base import KARRAS_COMPATIBLES, BaseScheduler, TrainedBetas, custom_array
from .flow_match import shift_sigmas
from .sampling import broadcast_to, eps_from_roots_vp, threshold_sample, x0_from_roots_vp
from .schedules import (
    beta_sigmas,
    check_num_inference_steps,
    exponential_sigmas,
    karras_sigmas,
    lu_lambdas,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    solver_timesteps,
    with_final_sigma,
)

__all__ = [
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "NoiseLevel",
    "data_prediction",
    "dpm_solver_step",
    "multistep_differences",
    "noise_level",
    "noise_prediction",
    "singlestep_differences",
]

AlgorithmType = Literal["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"]
SolverType = Literal["midpoint", "heun"]
SolverPrediction = Literal["epsilon", "sample", "v_prediction", "flow_prediction"]
FinalSigmasType = Literal["zero", "sigma_min"]


# ---------------------------------------------------------------------------------------------
# pure maths
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NoiseLevel:
    """One point of the schedule: ``x = alpha x0 + sigma eps`` and the half log-SNR ``lam = log(alpha / sigma)``."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    lam: torch.Tensor


def noise_level(sigma: torch.Tensor, *, flow: bool = False) -> NoiseLevel:
    """Alpha, sigma and lambda of a VE noise level ``sigma`` (VP: alpha = 1/sqrt(1+sigma^2); flow: alpha = 1-sigma)."""
    if flow:
        alpha, sig = 1 - sigma, sigma
    else:
        alpha = 1 / ((sigma**2 + 1) ** 0.5)
        sig = sigma * alpha
    return NoiseLevel(alpha, sig, torch.log(alpha) - torch.log(sig))


def data_prediction(
    model_output: torch.Tensor, sample: torch.Tensor, level: NoiseLevel, prediction_type: str
) -> torch.Tensor:
    """The clean sample x0 implied by a model output at ``level`` (DPM-Solver++, sec. 3.1)."""
    if prediction_type == "flow_prediction":  # rectified flow: x = (1 - sigma) x0 + sigma eps, v = eps - x0
        return sample - level.sigma * model_output
    return x0_from_roots_vp(model_output, sample, level.alpha, level.sigma, prediction_type)


def noise_prediction(
    model_output: torch.Tensor, sample: torch.Tensor, level: NoiseLevel, prediction_type: str
) -> torch.Tensor:
    """The noise eps implied by a model output at ``level`` (DPM-Solver, sec. 3)."""
    return eps_from_roots_vp(model_output, sample, level.alpha, level.sigma, prediction_type)


def dpm_solver_step(
    sample: torch.Tensor,
    derivatives: Sequence[torch.Tensor],
    s: NoiseLevel,
    t: NoiseLevel,
    *,
    algorithm: str,
    d1_rule: str = "heun",
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exponential-integrator step from ``s`` to ``t`` with a Taylor expansion of the model output in lambda.

    ``derivatives`` holds ``D0`` (the model output at ``s``) and optionally the scaled
    differences ``D1`` and ``D2`` (DPM-Solver eq. 3.4, DPM-Solver++ algorithms 1-2; the SDE
    variants follow DPM-Solver++ sec. 5 / eq. 20). ``d1_rule`` picks the second-order
    coefficient: ``midpoint`` or ``heun``.
    """
    h = t.lam - s.lam
    d0 = derivatives[0]
    d1 = derivatives[1] if len(derivatives) > 1 else None
    d2 = derivatives[2] if len(derivatives) > 2 else None
    if algorithm == "dpmsolver++":
        phi = torch.exp(-h) - 1.0
        x = (t.sigma / s.sigma) * sample - (t.alpha * phi) * d0
        if d1 is not None:
            x = x - 0.5 * (t.alpha * phi) * d1 if d1_rule == "midpoint" else x + (t.alpha * (phi / h + 1.0)) * d1
        if d2 is not None:
            x = x - (t.alpha * ((phi + h) / h**2 - 0.5)) * d2
        return x
    if algorithm == "dpmsolver":
        phi = torch.exp(h) - 1.0
        x = (t.alpha / s.alpha) * sample - (t.sigma * phi) * d0
        if d1 is not None:
            x = x - 0.5 * (t.sigma * phi) * d1 if d1_rule == "midpoint" else x - (t.sigma * (phi / h - 1.0)) * d1
        if d2 is not None:
            x = x - (t.sigma * ((phi - h) / h**2 - 0.5)) * d2
        return x
    if noise is None:
        raise ValueError(f"algorithm_type {algorithm!r} is stochastic and needs noise")
    if algorithm == "sde-dpmsolver++":
        e2 = 1.0 - torch.exp(-2.0 * h)
        x = (t.sigma / s.sigma * torch.exp(-h)) * sample + (t.alpha * e2) * d0
        if d1 is not None:
            x = x + 0.5 * (t.alpha * e2) * d1 if d1_rule == "midpoint" else x + (t.alpha * (e2 / (-2.0 * h) + 1.0)) * d1
        if d2 is not None:
            x = x + (t.alpha * ((e2 - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * d2
        return x + t.sigma * torch.sqrt(e2) * noise
    if algorithm == "sde-dpmsolver":
        phi = torch.exp(h) - 1.0
        x = (t.alpha / s.alpha) * sample - 2.0 * (t.sigma * phi) * d0
        if d1 is not None:
            x = x - (t.sigma * phi) * d1 if d1_rule == "midpoint" else x - 2.0 * (t.sigma * (phi / h - 1.0)) * d1
        if d2 is not None:
            raise ValueError("algorithm_type 'sde-dpmsolver' has no third-order update; use solver_order 1 or 2")
        return x + t.sigma * torch.sqrt(torch.exp(2 * h) - 1.0) * noise
    raise ValueError(
        f"unknown algorithm_type {algorithm!r}; choose 'dpmsolver++', 'sde-dpmsolver++', 'dpmsolver' or 'sde-dpmsolver'"
    )


def multistep_differences(
    outputs: Sequence[torch.Tensor], levels: Sequence[NoiseLevel], t: NoiseLevel
) -> list[torch.Tensor]:
    """``[D0, D1, D2]`` of a multistep update from the newest point, by backward differences in lambda.

    ``outputs`` and ``levels`` run oldest to newest (up to three); DPM-Solver++ algorithm 2 and
    its third-order extension.
    """
    m0, s0 = outputs[-1], levels[-1]
    if len(outputs) == 1:
        return [m0]
    h = t.lam - s0.lam
    m1, s1 = outputs[-2], levels[-2]
    r0 = (s0.lam - s1.lam) / h
    d1_0 = (1.0 / r0) * (m0 - m1)
    if len(outputs) == 2:
        return [m0, d1_0]
    m2, s2 = outputs[-3], levels[-3]
    r1 = (s1.lam - s2.lam) / h
    d1_1 = (1.0 / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    return [m0, d1, d2]


def singlestep_differences(
    outputs: Sequence[torch.Tensor], levels: Sequence[NoiseLevel], t: NoiseLevel, solver_type: str
) -> list[torch.Tensor]:
    """``[D0, D1(, D2)]`` of a singlestep update from the oldest point (DPM-Solver algorithms 1-2, DPM-Solver++ 1).

    ``outputs`` and ``levels`` run oldest to newest; the update starts at ``levels[0]``. The
    third-order ``midpoint`` variant keeps only the first difference to the newest point.
    """
    base, m_base = levels[0], outputs[0]
    if len(outputs) == 1:
        return [m_base]
    h = t.lam - base.lam
    if len(outputs) == 2:
        r0 = (levels[1].lam - base.lam) / h
        return [m_base, (1.0 / r0) * (outputs[1] - m_base)]
    m1, m0 = outputs[1], outputs[2]
    r0, r1 = (levels[2].lam - base.lam) / h, (levels[1].lam - base.lam) / h
    d1_0, d1_1 = (1.0 / r1) * (m1 - m_base), (1.0 / r0) * (m0 - m_base)
    if solver_type == "midpoint":
        return [m_base, d1_1]
    d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
    d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
    return [m_base, d1, d2]


def shifted_flow_sigmas(num_inference_steps: int, num_train_timesteps: int, shift: float) -> np.ndarray:
    """Descending flow-matching sigmas ``shift s / (1 + (shift - 1) s)`` without the final zero (SD3, eq. 23)."""
    s = 1.0 - np.linspace(1, 1 / num_train_timesteps, num_inference_steps + 1)
    return np.flip(shift_sigmas(s, shift))[:-1].copy()


# ---------------------------------------------------------------------------------------------
# shared scheduler plumbing for the log-SNR solvers (DPM-Solver, UniPC, DEIS)
# ---------------------------------------------------------------------------------------------


class LambdaSolverScheduler(BaseScheduler):
    """Base of the solvers that step in lambda = log(alpha / sigma) over a VP (or flow) schedule."""

    _compatibles = KARRAS_COMPATIBLES
    order: ClassVar[int] = 1
    init_noise_sigma: float = 1.0

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    sigmas: torch.Tensor
    timesteps: torch.Tensor
    num_inference_steps: int | None
    model_outputs: list[torch.Tensor | None]
    lower_order_nums: int

    def _init_schedule(
        self,
        num_train_timesteps: int,
        beta_start: float,
        beta_end: float,
        beta_schedule: str,
        trained_betas: TrainedBetas,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._check_one_sigma_ramp()
        self._init_training_schedule(
            num_train_timesteps,
            beta_start,
            beta_end,
            beta_schedule,
            trained_betas,
            rescale_betas_zero_snr,
            finite_terminal_snr=True,
        )
        self.sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps)[::-1].copy())
        self._levels: list[NoiseLevel] = []
        self._reset_step_state()
        self._reset_history()

    # -- state --------------------------------------------------------------------------------

    def _reset_history(self) -> None:
        self.model_outputs = [None] * int(self.config.solver_order)
        self.lower_order_nums = 0

    # -- schedule -----------------------------------------------------------------------------

    @property
    def _flow(self) -> bool:
        return bool(self.config.get("use_flow_sigmas", False))

    def _train_sigmas(self) -> np.ndarray:
        return sigmas_from_alphas_cumprod(self.alphas_cumprod).numpy()

    def _converted_sigmas(self, train_sigmas: np.ndarray, num_inference_steps: int) -> np.ndarray | None:
        """Karras / exponential / beta sigmas between the training extremes (or config ``sigma_min/max``)."""
        low = self.config.get("sigma_min")
        high = self.config.get("sigma_max")
        low = float(train_sigmas[0]) if low is None else float(low)
        high = float(train_sigmas[-1]) if high is None else float(high)
        if self.config.get("use_karras_sigmas", False):
            return karras_sigmas(low, high, num_inference_steps)
        if self.config.get("use_exponential_sigmas", False):
            return exponential_sigmas(low, high, num_inference_steps)
        if self.config.get("use_beta_sigmas", False):
            return beta_sigmas(low, high, num_inference_steps)
        return None

    def _uses_sigma_schedule(self) -> bool:
        return any(
            self.config.get(k, False)
            for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")
        )

    def _apply_mu(self, mu: float | None) -> None:
        """``set_timesteps(mu=)``: with ``use_dynamic_shifting``, the flow shift becomes ``exp(mu)``."""
        if mu is None:
            return
        if not (self.config.use_dynamic_shifting and self.config.time_shift_type == "exponential"):
            raise ValueError("set_timesteps(mu=...) needs use_dynamic_shifting=True")
        self.register_to_config(flow_shift=float(np.exp(mu)))

    def _last_unclipped_timestep(self) -> int:
        """``num_train_timesteps`` less the noisiest steps whose log-SNR is below ``lambda_min_clipped``."""
        alphas_cumprod = self.alphas_cumprod
        lambda_t = torch.log(alphas_cumprod.sqrt()) - torch.log((1 - alphas_cumprod).sqrt())
        clipped = int(torch.searchsorted(torch.flip(lambda_t, [0]), self.config.lambda_min_clipped))
        return int(self.config.num_train_timesteps) - clipped

    def _solver_schedule(
        self,
        steps: np.ndarray,
        n: int,
        *,
        custom: bool = False,
        round_timesteps: bool = True,
        flow_sigmas: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(timesteps, sigmas)`` of an ``n``-step schedule, without the final sigma.

        A Karras / exponential / beta ramp or Lu's lambdas (timesteps recomputed from the sigmas,
        rounded for Karras and Lu when ``round_timesteps``), else flow-matching sigmas (default:
        :func:`shifted_flow_sigmas`), else the training sigmas interpolated at ``steps``.
        ``custom`` timesteps keep the interpolation.
        """
        config = self.config
        train_sigmas = self._train_sigmas()
        log_sigmas = np.log(train_sigmas)
        ramp = None if custom else self._converted_sigmas(train_sigmas, n)
        rounding = round_timesteps and bool(config.get("use_karras_sigmas"))
        if ramp is None and config.get("use_lu_lambdas") and not custom:
            ramp, rounding = np.exp(lu_lambdas(float(log_sigmas[-1]), float(log_sigmas[0]), n)), round_timesteps
        if ramp is not None:
            return self._ramp_schedule(ramp, log_sigmas, rounding)
        if self._flow:
            sig = flow_sigmas
            if sig is None:
                sig = shifted_flow_sigmas(n, config.num_train_timesteps, config.flow_shift)
            return sig * config.num_train_timesteps, sig
        return steps, np.interp(steps, np.arange(0, len(train_sigmas)), train_sigmas)

    def _ramp_schedule(self, ramp: np.ndarray, log_sigmas: np.ndarray, rounding: bool) -> tuple[np.ndarray, np.ndarray]:
        """Timesteps of ramp sigmas, by interpolation in log-sigma (rounded when ``rounding``)."""
        steps = np.asarray(sigma_to_t(np.asarray(ramp), log_sigmas))
        return (steps.round() if rounding else steps), ramp

    def _check_steps(self, num_inference_steps: int | None) -> int:
        if num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}.set_timesteps: pass num_inference_steps (or timesteps=)")
        check_num_inference_steps(num_inference_steps, int(self.config.num_train_timesteps))
        return int(num_inference_steps)

    def _install_schedule(
        self, timesteps: np.ndarray, sigmas: np.ndarray, final_sigma: float, device: str | torch.device | None
    ) -> None:
        """Install a schedule; a noise level repeated in a row (a zero-length step, which makes the
        multistep differences divide by zero: NaN in Diffusers) is refused with a clear error."""
        levels = np.asarray(sigmas, dtype=np.float32)
        repeated = np.flatnonzero(levels[1:] == levels[:-1])
        if len(repeated):
            i = int(repeated[0])
            raise ValueError(
                f"{type(self).__name__}.set_timesteps: {len(levels)} steps with timestep_spacing="
                f"{self.config.get('timestep_spacing', 'linspace')!r} repeat a noise level (timesteps "
                f"{np.asarray(timesteps)[i : i + 2].tolist()}): a zero-length step; use fewer steps"
            )
        self.sigmas = with_final_sigma(sigmas, final_sigma)
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._levels = [noise_level(s, flow=self._flow) for s in self.sigmas]
        self._reset_step_state()
        self._reset_history()

    # -- stepping helpers ---------------------------------------------------------------------

    def _level(self, index: int, device: torch.device) -> NoiseLevel:
        level = self._levels[index]
        if level.alpha.device != device:
            level = NoiseLevel(level.alpha.to(device), level.sigma.to(device), level.lam.to(device))
        return level

    def _drop_learned_variance(self, model_output: torch.Tensor) -> torch.Tensor:
        """Models that also predict the variance output it after the noise channels: keep the first 3."""
        learned = self.config.get("variance_type") in ("learned", "learned_range")
        return model_output[:, :3] if learned and self.config.prediction_type == "epsilon" else model_output

    def _to_data(self, model_output: torch.Tensor, sample: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        """x0 from the model output, dynamically thresholded when configured."""
        model_output = self._drop_learned_variance(model_output)
        x0 = data_prediction(model_output, sample, level, str(self.config.prediction_type))
        if self.config.thresholding:
            x0 = threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
        return x0

    def _to_noise(self, model_output: torch.Tensor, sample: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        """eps from the model output; with thresholding, recomputed from the thresholded x0."""
        model_output = self._drop_learned_variance(model_output)
        eps = noise_prediction(model_output, sample, level, str(self.config.prediction_type))
        if self.config.thresholding:
            x0 = (sample - level.sigma * eps) / level.alpha
            x0 = threshold_sample(x0, self.config.dynamic_thresholding_ratio, self.config.sample_max_value)
            eps = (sample - level.alpha * x0) / level.sigma
        return eps

    def _convert(self, model_output: torch.Tensor, sample: torch.Tensor, level: NoiseLevel) -> torch.Tensor:
        """The model output as the solver's variable: x0 for the data-prediction algorithms, else eps."""
        if self.config.algorithm_type in ("dpmsolver++", "sde-dpmsolver++"):
            return self._to_data(model_output, sample, level)
        return self._to_noise(model_output, sample, level)

    def _push(self, converted: torch.Tensor) -> None:
        self.model_outputs = [*self.model_outputs[1:], converted]

    def _multistep_order(self, lower_first: bool, lower_second: bool) -> int:
        """The order of this multistep update: it grows with the history, and drops to 1 / 2 when told."""
        solver_order = self.config.solver_order
        if solver_order == 1 or self.lower_order_nums < 1 or lower_first:
            return 1
        if solver_order == 2 or self.lower_order_nums < 2 or lower_second:
            return 2
        return 3

    def _recent(self, order: int, index: int, device: torch.device) -> tuple[list[torch.Tensor], list[NoiseLevel]]:
        """The last ``order`` converted outputs and their levels, oldest first (the newest is at ``index``)."""
        outputs = [o for o in self.model_outputs[-order:] if o is not None]
        return outputs, [self._level(index - k, device) for k in range(order - 1, -1, -1)]

    def _advance(self, index: int) -> None:
        """Book-keeping after a multistep update at ``index``."""
        if self.lower_order_nums < self.config.solver_order:
            self.lower_order_nums += 1
        self._step_index = index + 1

    # -- the protocol -------------------------------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The solvers take the unscaled sample: returned as is."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion to the noise levels of ``timesteps``: ``alpha x0 + sigma eps``."""
        sigma = broadcast_to(self._sigmas_at(timesteps, original_samples), original_samples)
        level = noise_level(sigma, flow=self._flow)
        return level.alpha * original_samples + level.sigma * noise


def _normalise_solver_choice(
    scheduler: SchedulerMixin, algorithm_type: str, solver_type: str, allowed_algorithms: tuple[str, ...]
) -> tuple[str, str]:
    """Map the options of compatible schedulers (DEIS 'deis', UniPC 'bh1'/'bh2' ...) onto DPM-Solver's."""
    if algorithm_type == "deis":
        algorithm_type = "dpmsolver++"
        scheduler.register_to_config(algorithm_type=algorithm_type)
    elif algorithm_type not in allowed_algorithms:
        raise ValueError(
            f"{type(scheduler).__name__}: unknown algorithm_type {algorithm_type!r}; choose one of {allowed_algorithms}"
        )
    if solver_type in ("logrho", "bh1", "bh2"):
        solver_type = "midpoint"
        scheduler.register_to_config(solver_type=solver_type)
    return algorithm_type, solver_type


def _final_sigma(alphas_cumprod: torch.Tensor, final_sigmas_type: str) -> float:
    if final_sigmas_type == "sigma_min":
        return float(((1 - alphas_cumprod[0]) / alphas_cumprod[0]) ** 0.5)
    if final_sigmas_type == "zero":
        return 0.0
    raise ValueError(f"unknown final_sigmas_type {final_sigmas_type!r}; choose 'zero' or 'sigma_min'")


# ---------------------------------------------------------------------------------------------
# the schedulers
# ---------------------------------------------------------------------------------------------


class DPMSolverMultistepScheduler(LambdaSolverScheduler):
    """DPM-Solver / DPM-Solver++ multistep (orders 1-3), ODE or SDE (``sde-dpmsolver++``)."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        trained_betas: TrainedBetas = None,
        solver_order: Literal[1, 2, 3] = 2,
        prediction_type: SolverPrediction = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: Literal["dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++", "deis"] = "dpmsolver++",
        solver_type: Literal["midpoint", "heun", "logrho", "bh1", "bh2"] = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: FinalSigmasType = "zero",
        lambda_min_clipped: float = -math.inf,
        variance_type: Literal["learned", "learned_range"] | None = None,
        timestep_spacing: Literal["linspace", "leading", "trailing"] = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ) -> None:
        algorithm, _ = _normalise_solver_choice(
            self, algorithm_type, solver_type, ("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")
        )
        if algorithm not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(
                f"DPMSolverMultistepScheduler: final_sigmas_type='zero' needs a data-prediction algorithm "
                f"('dpmsolver++' or 'sde-dpmsolver++'), not {algorithm!r}; use final_sigmas_type='sigma_min'"
            )
        if algorithm == "sde-dpmsolver" and solver_order == 3:
            raise ValueError("DPMSolverMultistepScheduler: algorithm_type 'sde-dpmsolver' supports solver_order 1 or 2")
        self._init_schedule(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr
        )

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        mu: float | None = None,
    ) -> None:
        """Build the inference schedule: ``num_inference_steps`` spaced steps, or custom ``timesteps``.

        ``mu`` (with ``use_dynamic_shifting``) sets ``flow_shift = exp(mu)``.
        """
        config = self.config
        if sigmas is not None:
            raise ValueError("DPMSolverMultistepScheduler.set_timesteps does not take sigmas=; pass timesteps=")
        self._apply_mu(mu)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError(
                "DPMSolverMultistepScheduler.set_timesteps: pass exactly one of num_inference_steps or timesteps"
            )
        if timesteps is not None:
            if self._uses_sigma_schedule():
                raise ValueError(
                    "DPMSolverMultistepScheduler: custom timesteps cannot be combined with karras / exponential / "
                    "beta sigmas or lu lambdas"
                )
            steps = custom_array(timesteps, "timesteps", type(self).__name__).astype(np.int64)
            for t in steps:
                if not 0 <= t < config.num_train_timesteps:
                    raise ValueError(f"custom timestep {int(t)} is outside [0, {config.num_train_timesteps})")
            n = len(steps)
        else:
            n = self._check_steps(num_inference_steps)
            steps = solver_timesteps(
                n,
                config.num_train_timesteps,
                config.timestep_spacing,
                config.steps_offset,
                last_timestep=self._last_unclipped_timestep(),
            )
        round_t = config.beta_schedule != "squaredcos_cap_v2"
        steps, sig = self._solver_schedule(steps, n, custom=timesteps is not None, round_timesteps=round_t)
        self._install_schedule(steps, sig, _final_sigma(self.alphas_cumprod, config.final_sigmas_type), device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One multistep DPM-Solver step from ``timestep`` to the next (``eta`` is unused).

        The SDE variants draw noise from ``generator`` (or take ``variance_noise``).
        """
        self._require_timesteps()
        config = self.config
        i = self._ensure_step_index(timestep)
        n = len(self.timesteps)
        few = config.lower_order_final and n < 15
        last = i == n - 1
        first_order_final = last and (config.euler_at_final or few or config.final_sigmas_type == "zero")
        second_order_final = i == n - 2 and few

        device = sample.device
        s0 = self._level(i, device)
        t = self._level(i + 1, device)
        algorithm = str(config.algorithm_type)
        converted = self._convert(model_output, sample, s0)
        self._push(converted)
        x = sample.to(torch.float32)
        noise = None
        if algorithm.startswith("sde-"):
            if variance_noise is None:
                noise = randn_tensor(converted.shape, generator=generator, device=converted.device, dtype=torch.float32)
            else:
                noise = variance_noise.to(device=converted.device, dtype=torch.float32)
        order = self._multistep_order(first_order_final, second_order_final)
        outputs, levels = self._recent(order, i, device)
        derivatives = multistep_differences(outputs, levels, t)
        d1_rule = str(config.solver_type) if order == 2 else "heun"  # the third-order update is Heun-like
        prev = dpm_solver_step(x, derivatives, s0, t, algorithm=algorithm, d1_rule=d1_rule, noise=noise)
        self._advance(i)
        return self._output(prev.to(converted.dtype), None, return_dict)


class DPMSolverSinglestepScheduler(LambdaSolverScheduler):
    """DPM-Solver / DPM-Solver++ singlestep: each order-k update reuses the k-1 outputs since its start point."""

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear",
        trained_betas: TrainedBetas = None,
        solver_order: Literal[1, 2, 3] = 2,
        prediction_type: SolverPrediction = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: Literal["dpmsolver", "dpmsolver++", "sde-dpmsolver++", "deis"] = "dpmsolver++",
        solver_type: Literal["midpoint", "heun", "logrho", "bh1", "bh2"] = "midpoint",
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: FinalSigmasType = "zero",
        lambda_min_clipped: float = -math.inf,
        variance_type: Literal["learned", "learned_range"] | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: Literal["exponential"] = "exponential",
    ) -> None:
        algorithm, _ = _normalise_solver_choice(
            self, algorithm_type, solver_type, ("dpmsolver", "dpmsolver++", "sde-dpmsolver++")
        )
        if algorithm not in ("dpmsolver++", "sde-dpmsolver++") and final_sigmas_type == "zero":
            raise ValueError(
                f"DPMSolverSinglestepScheduler: final_sigmas_type='zero' needs algorithm_type 'dpmsolver++' or "
                f"'sde-dpmsolver++', not {algorithm!r}; use final_sigmas_type='sigma_min'"
            )
        self._init_schedule(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas)
        self._start_sample: torch.Tensor | None = None
        self.order_list = self.get_order_list(num_train_timesteps)

    def get_order_list(self, num_inference_steps: int) -> list[int]:
        """The order of each step: cycles 1, 2, .., solver_order (lower orders at the end if configured)."""
        steps, order = num_inference_steps, int(self.config.solver_order)
        cycle = list(range(1, order + 1))
        full, rest = divmod(steps, order)
        if self.config.lower_order_final:
            if order == 1 or rest:
                orders = cycle * full + list(range(1, rest + 1))
            else:
                orders = cycle * (full - 1) + list(range(1, order)) + [1]
        else:
            orders = cycle * full
        if self.config.final_sigmas_type == "zero" and orders:
            orders[-1] = 1
        return orders

    def _reset_history(self) -> None:
        super()._reset_history()
        self._start_sample = None

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        *,
        timesteps: Sequence[int] | torch.Tensor | None = None,
        sigmas: Sequence[float] | torch.Tensor | None = None,
        mu: float | None = None,
    ) -> None:
        """Build the inference schedule (linspace over the unclipped range), or use custom ``timesteps``."""
        config = self.config
        if sigmas is not None:
            raise ValueError("DPMSolverSinglestepScheduler.set_timesteps does not take sigmas=; pass timesteps=")
        self._apply_mu(mu)
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError(
                "DPMSolverSinglestepScheduler.set_timesteps: pass exactly one of num_inference_steps or timesteps"
            )
        if timesteps is not None and self._uses_sigma_schedule():
            raise ValueError(
                "DPMSolverSinglestepScheduler: custom timesteps cannot be combined with karras / exponential / "
                "beta sigmas"
            )
        if timesteps is not None:
            steps = custom_array(timesteps, "timesteps", type(self).__name__).astype(np.int64)
            n = len(steps)
        else:
            n = self._check_steps(num_inference_steps)
            steps = solver_timesteps(n, config.num_train_timesteps, "linspace", 0, self._last_unclipped_timestep())
        steps, sig = self._solver_schedule(steps, n, custom=timesteps is not None)
        self._install_schedule(steps, sig, _final_sigma(self.alphas_cumprod, config.final_sigmas_type), device)
        if not config.lower_order_final and (n % config.solver_order != 0 or config.final_sigmas_type == "zero"):
            # an uneven step count, or a final step to sigma 0, needs the low-order tail
            self.register_to_config(lower_order_final=True)
        self.order_list = self.get_order_list(n)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        *,
        eta: float = 0.0,
    ) -> SchedulerOutput | tuple[torch.Tensor, ...]:
        """One singlestep DPM-Solver step; the update of order k starts from the sample k-1 steps back."""
        self._require_timesteps()
        config = self.config
        i = self._ensure_step_index(timestep)
        device = sample.device
        algorithm = str(config.algorithm_type)
        level = self._level(i, device)
        converted = self._convert(model_output, sample, level)
        self._push(converted)
        noise = None
        if algorithm == "sde-dpmsolver++":
            noise = randn_tensor(converted.shape, generator=generator, device=converted.device, dtype=converted.dtype)
        order = self.order_list[i]
        while self.model_outputs[-order] is None:
            order -= 1
        if order == 1:
            self._start_sample = sample
        if self._start_sample is None:
            raise RuntimeError(
                f"{type(self).__name__}: a order-{order} update needs the sample of its first step; step through "
                "scheduler.timesteps from the start (or a step boundary set with set_begin_index)"
            )
        outputs, levels = self._recent(order, i, device)
        t = self._level(i + 1, device)
        derivatives = singlestep_differences(outputs, levels, t, str(config.solver_type))
        d1_rule = str(config.solver_type) if order == 2 else "heun"  # third order: D1 or D1_1 with Heun weights
        prev = dpm_solver_step(
            self._start_sample, derivatives, levels[0], t, algorithm=algorithm, d1_rule=d1_rule, noise=noise
        )
        self._step_index = i + 1
        return self._output(prev, None, return_dict)
