"""Noise schedules: betas, cumulative alphas, timestep spacings and sigma schedules.

Pure functions shared by every scheduler. Where a schedule is defined on the host in
float64 (timestep spacings, sigma ramps) it is computed with numpy, so that the numbers agree
with the Diffusers schedulers bit for bit; the per-step maths runs in torch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import numpy as np
import torch

__all__ = [
    "BetaSchedule",
    "TimestepSpacing",
    "alphas_cumprod_from_betas",
    "beta_ppf",
    "beta_sigmas",
    "betas_for_alpha_bar",
    "check_num_inference_steps",
    "exponential_sigmas",
    "karras_from_ramp",
    "karras_sigmas",
    "lu_lambdas",
    "make_betas",
    "rescale_zero_terminal_snr",
    "sigma_to_t",
    "sigma_to_t_torch",
    "sigmas_from_alphas_cumprod",
    "solver_timesteps",
    "spaced_timesteps",
    "with_final_sigma",
]

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace", "exp"]
TimestepSpacing = Literal["linspace", "leading", "trailing"]
AlphaTransform = Literal["cosine", "exp", "laplace"]


def _alpha_bar_fn(kind: AlphaTransform) -> Callable[[float], float]:
    if kind == "cosine":  # Nichol & Dhariwal 2021, eq. 17
        return lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    if kind == "exp":
        return lambda t: math.exp(t * -12.0)
    if kind == "laplace":  # Hang et al. 2024, laplace noise schedule

        def laplace(t: float) -> float:
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))

        return laplace
    raise ValueError(f"unknown alpha_bar transform {kind!r}; choose 'cosine', 'exp' or 'laplace'")


def betas_for_alpha_bar(
    num_train_timesteps: int, max_beta: float = 0.999, alpha_transform_type: AlphaTransform = "cosine"
) -> torch.Tensor:
    """Betas that discretise a continuous ``alpha_bar(t)``, t in [0, 1] (improved DDPM, eq. 17)."""
    alpha_bar = _alpha_bar_fn(alpha_transform_type)
    n = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    """The float32 betas of a training noise schedule (explicit ``trained_betas`` win)."""
    if trained_betas is not None:
        return torch.as_tensor(np.asarray(trained_betas), dtype=torch.float32).clone()
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    if beta_schedule == "scaled_linear":  # latent diffusion: linear in sqrt(beta)
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(n, alpha_transform_type="cosine")
    if beta_schedule in ("laplace", "exp"):
        return betas_for_alpha_bar(n, alpha_transform_type=beta_schedule)  # type: ignore[arg-type]
    if beta_schedule == "sigmoid":  # GeoDiff
        return torch.sigmoid(torch.linspace(-6, 6, n)) * (beta_end - beta_start) + beta_start
    raise ValueError(
        f"unknown beta_schedule {beta_schedule!r}; choose 'linear', 'scaled_linear', 'squaredcos_cap_v2', "
        "'sigmoid', 'laplace' or 'exp', or pass trained_betas"
    )


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last timestep has zero SNR (Lin et al. 2023, Algorithm 1)."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alphas = torch.cat([alpha_bar[0:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s)."""
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The variance-exploding noise level of each training timestep: sqrt((1 - a) / a)."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def check_num_inference_steps(num_inference_steps: int, num_train_timesteps: int | None = None) -> None:
    """Raise a clear ``ValueError`` unless 1 <= num_inference_steps <= num_train_timesteps."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
    if num_train_timesteps is not None and num_inference_steps > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_inference_steps} is larger than num_train_timesteps={num_train_timesteps}: "
            f"the model was trained on {num_train_timesteps} timesteps only; use at most that many steps"
        )


def spaced_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int,
    spacing: str,
    steps_offset: int = 0,
    *,
    integer: bool = True,
) -> np.ndarray:
    """Descending inference timesteps (Lin et al. 2023, table 2).

    ``linspace`` spreads the steps evenly over [0, T-1] (rounded when ``integer``), ``leading``
    takes every ``T // n``-th step from 0 and adds ``steps_offset``, ``trailing`` counts back
    from ``T - 1``. Returns int64 when ``integer``, else float32.
    """
    n, big_t = num_inference_steps, num_train_timesteps
    if spacing == "linspace":
        if integer:
            return np.linspace(0, big_t - 1, n).round()[::-1].copy().astype(np.int64)
        return np.linspace(0, big_t - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = big_t // n
        out = (np.arange(0, n) * ratio).round()[::-1].copy()
        out = out.astype(np.int64) if integer else out.astype(np.float32)
        return out + steps_offset
    if spacing == "trailing":
        out = np.round(np.arange(big_t, 0, -big_t / n))
        out = out.astype(np.int64) if integer else out.astype(np.float32)
        return out - 1
    raise ValueError(f"unknown timestep_spacing {spacing!r}; choose 'linspace', 'leading' or 'trailing'")


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timesteps of ``sigmas``, by linear interpolation in log-sigma."""
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    # the last training index whose log-sigma is <= log_sigma (0 below the first): the training
    # log-sigmas increase with t, so a binary search finds it
    low = (np.searchsorted(log_sigmas, log_sigma, side="right") - 1).clip(min=0, max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    t = (1 - w) * low + w * high
    return np.asarray(t).reshape(sigmas.shape)


def sigma_to_t_torch(sigmas: torch.Tensor, log_sigmas: torch.Tensor) -> torch.Tensor:
    """:func:`sigma_to_t` evaluated in torch, in the precision of ``sigmas`` (float32 midpoints of KDPM2)."""
    log_sigma = torch.from_numpy(np.log(np.maximum(sigmas.numpy(), 1e-10)))
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(min=0, max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high])).clamp(0, 1)
    return (1 - w) * low + w * high


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0) -> np.ndarray:
    """Descending sigmas evenly spaced in sigma^(1/rho) (Karras et al. 2022, eq. 5)."""
    ramp = np.linspace(0, 1, num_inference_steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return np.asarray((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """Descending sigmas evenly spaced in log-sigma."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return h


def _beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile function of the Beta(a, b) distribution, by bisection on the CDF."""
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def beta_sigmas(
    sigma_min: float, sigma_max: float, num_inference_steps: int, alpha: float = 0.6, beta: float = 0.6
) -> np.ndarray:
    """Descending sigmas placed at Beta(alpha, beta) quantiles (Lee et al. 2024, "Beta sampling")."""
    quantiles = np.array(_beta_quantiles(num_inference_steps, alpha, beta))
    return np.asarray(sigma_min + quantiles * (sigma_max - sigma_min))


@functools.lru_cache(maxsize=64)
def _beta_quantiles(num_inference_steps: int, alpha: float, beta: float) -> tuple[float, ...]:
    """Beta(alpha, beta) quantiles at ``1 - linspace(0, 1, n)`` (cached: the bisection is slow in Python)."""
    qs = 1 - np.linspace(0, 1, num_inference_steps)
    return tuple(beta_ppf(float(q), alpha, beta) for q in qs)


_Ramp = TypeVar("_Ramp", np.ndarray, torch.Tensor)


def karras_from_ramp(ramp: _Ramp, sigma_min: float, sigma_max: float, rho: float = 7.0) -> _Ramp:
    """Karras sigmas at arbitrary ramp positions in [0, 1] (0 gives ``sigma_max``), in the ramp's own
    array type and precision (Karras et al. 2022, eq. 5)."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho  # type: ignore[no-any-return]


def solver_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int,
    spacing: str,
    steps_offset: int = 0,
    last_timestep: int | None = None,
) -> np.ndarray:
    """Descending int64 timesteps of the multistep solvers: ``n + 1`` points on [0, last) less the final 0.

    ``last_timestep`` (default ``num_train_timesteps``) excludes the noisiest steps whose
    log-SNR is clipped.
    """
    n, last = num_inference_steps, num_train_timesteps if last_timestep is None else last_timestep
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    if spacing == "trailing":
        return np.arange(last, 0, -num_train_timesteps / n).round().copy().astype(np.int64) - 1
    raise ValueError(f"unknown timestep_spacing {spacing!r}; choose 'linspace', 'leading' or 'trailing'")


def lu_lambdas(lambda_max: float, lambda_min: float, num_inference_steps: int) -> np.ndarray:
    """Lambdas (here log-sigmas) evenly spaced from ``lambda_max`` to ``lambda_min`` (DPM-Solver, sec. 3.3)."""
    ramp = np.linspace(0, 1, num_inference_steps)
    return np.asarray(lambda_max + ramp * (lambda_min - lambda_max))


def with_final_sigma(sigmas: np.ndarray | Sequence[float], final: float = 0.0) -> torch.Tensor:
    """float32 sigmas of a schedule with the noise level after the last step appended (0: the clean sample)."""
    return torch.from_numpy(np.concatenate([np.asarray(sigmas), [final]]).astype(np.float32))
