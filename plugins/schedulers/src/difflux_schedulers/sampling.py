"""The step maths shared by the schedulers: short pure functions, one per idea (k-diffusion style).

Two parametrisations appear:

- variance preserving (DDPM/DDIM): ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps`` with ``a_t`` the
  cumulative product of alphas;
- variance exploding / k-diffusion: ``x = x0 + sigma eps`` with ``sigma = sqrt((1 - a) / a)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from difflux.torch_utils import randn_tensor

__all__ = [
    "PredictionType",
    "add_noise_sigma",
    "add_noise_vp",
    "broadcast_to",
    "clip_or_threshold",
    "ddim_step",
    "ddim_step_from_roots",
    "ddim_variance",
    "ddpm_posterior_coefficients",
    "ddpm_posterior_mean",
    "denoised_from_sigma",
    "edm_c_in",
    "edm_scalings",
    "eps_from_roots_vp",
    "euler_step",
    "get_ancestral_step",
    "lms_coefficient",
    "noise_like",
    "pndm_transfer",
    "pndm_transfer_coefficients",
    "pndm_transfer_from_coefficients",
    "predict_x0_eps_vp",
    "threshold_sample",
    "to_d",
    "velocity_vp",
    "x0_from_roots_vp",
]

PredictionType = Literal["epsilon", "sample", "v_prediction"]


def broadcast_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Flatten per-sample ``values`` and add trailing singleton dims to broadcast against ``like``."""
    values = values.flatten()
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def predict_x0_eps_vp(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean sample and noise from a VP model output (DDPM eq. 15; v-prediction: Salimans & Ho 2022, sec. 4)."""
    sqrt_alpha, sqrt_one_minus_alpha = alpha_prod_t**0.5, (1 - alpha_prod_t) ** 0.5
    x0 = x0_from_roots_vp(model_output, sample, sqrt_alpha, sqrt_one_minus_alpha, prediction_type)
    return x0, eps_from_roots_vp(model_output, sample, sqrt_alpha, sqrt_one_minus_alpha, prediction_type)


def denoised_from_sigma(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sigma: torch.Tensor | float,
    prediction_type: str,
    sigma_hat: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Clean sample from a model output in the VE/k-diffusion parametrisation (Karras et al. 2022, table 1).

    ``sample`` is the unscaled sample at noise level ``sigma_hat`` (defaults to ``sigma``);
    v-prediction uses the scaling at ``sigma``.
    """
    if prediction_type in ("epsilon",):
        return sample - (sigma if sigma_hat is None else sigma_hat) * model_output
    if prediction_type in ("sample", "original_sample"):
        return model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose 'epsilon', 'sample' or 'v_prediction'")


def to_d(sample: torch.Tensor, sigma: torch.Tensor | float, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma (Karras et al. 2022, eq. 4)."""
    return (sample - denoised).div_(sigma)


def get_ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a step to ``sigma_to`` into a deterministic part ``sigma_down`` and fresh noise ``sigma_up``
    (k-diffusion ``get_ancestral_step``); ``sigma_down`` is never NaN (its square is clamped at 0)."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    if eta != 1.0:
        sigma_up = torch.minimum(sigma_to, eta * sigma_up)
    sigma_down = (sigma_to**2 - sigma_up**2).clamp(min=0) ** 0.5  # rounding can make the difference < 0
    return sigma_up, sigma_down


def threshold_sample(sample: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding: clamp to the per-sample ``ratio`` quantile of |x| and rescale (Imagen, sec. 2.3)."""
    dtype = sample.dtype
    batch, channels, *rest = sample.shape
    flat = sample.reshape(batch, channels * int(np.prod(rest)))
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    flat = torch.clamp(flat, -s, s) / s
    return flat.reshape(batch, channels, *rest).to(dtype)


def clip_or_threshold(
    x0: torch.Tensor,
    *,
    thresholding: bool,
    clip_sample: bool,
    clip_sample_range: float = 1.0,
    dynamic_thresholding_ratio: float = 0.995,
    sample_max_value: float = 1.0,
) -> torch.Tensor:
    """Dynamic thresholding if enabled, else clipping to ``[-range, range]`` if enabled."""
    if thresholding:
        return threshold_sample(x0, dynamic_thresholding_ratio, sample_max_value)
    if clip_sample:
        return x0.clamp(-clip_sample_range, clip_sample_range)
    return x0


def add_noise_vp(
    original: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """Forward diffusion q(x_t | x_0) = N(sqrt(a_t) x_0, (1 - a_t) I) (DDPM eq. 4)."""
    a = alphas_cumprod.to(device=original.device, dtype=original.dtype)[timesteps.to(original.device)]
    return broadcast_to(a**0.5, original) * original + broadcast_to((1 - a) ** 0.5, original) * noise


def velocity_vp(
    sample: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The v-prediction target v = sqrt(a_t) eps - sqrt(1 - a_t) x_0 (Salimans & Ho 2022, sec. 4)."""
    a = alphas_cumprod.to(device=sample.device, dtype=sample.dtype)[timesteps.to(sample.device)]
    return broadcast_to(a**0.5, sample) * noise - broadcast_to((1 - a) ** 0.5, sample) * sample


def add_noise_sigma(original: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Forward diffusion in the VE parametrisation: x = x_0 + sigma eps."""
    return original + noise * broadcast_to(sigma, original)


def ddim_variance(alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor) -> torch.Tensor:
    """sigma_t^2 of DDIM with eta = 1 (Song et al. 2021, eq. 16)."""
    return (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)


def ddim_step(
    x0: torch.Tensor, eps: torch.Tensor, alpha_prod_t_prev: torch.Tensor, std_dev_t: torch.Tensor | float
) -> torch.Tensor:
    """The deterministic part of x_{t-1} in DDIM (Song et al. 2021, eq. 12)."""
    return ddim_step_from_roots(x0, eps, alpha_prod_t_prev**0.5, (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5)


def ddim_step_from_roots(
    x0: torch.Tensor, eps: torch.Tensor, sqrt_alpha_prev: torch.Tensor, direction_coeff: torch.Tensor
) -> torch.Tensor:
    """:func:`ddim_step` given sqrt(a_{t-1}) and sqrt(1 - a_{t-1} - sigma_t^2) (with eta = 0: sqrt(1 - a_{t-1}))."""
    return sqrt_alpha_prev * x0 + direction_coeff * eps


def ddpm_posterior_coefficients(
    alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weights of x0 and x_t in the mean of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7)."""
    current_alpha = alpha_prod_t / alpha_prod_t_prev
    x0_coeff = alpha_prod_t_prev**0.5 * (1 - current_alpha) / (1 - alpha_prod_t)
    sample_coeff = current_alpha**0.5 * (1 - alpha_prod_t_prev) / (1 - alpha_prod_t)
    return x0_coeff, sample_coeff


def ddpm_posterior_mean(
    x0: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor
) -> torch.Tensor:
    """Mean of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 7)."""
    x0_coeff, sample_coeff = ddpm_posterior_coefficients(alpha_prod_t, alpha_prod_t_prev)
    return x0_coeff * x0 + sample_coeff * sample


def pndm_transfer_coefficients(
    alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(sample_coeff, a_{t-delta} - a_t, denominator)`` of PNDM's transfer phi (Liu et al. 2022, eq. 9)."""
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    sample_coeff = (alpha_prod_t_prev / alpha_prod_t) ** 0.5
    denom = alpha_prod_t * beta_prod_t_prev**0.5 + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev) ** 0.5
    return sample_coeff, alpha_prod_t_prev - alpha_prod_t, denom


def pndm_transfer(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    alpha_prod_t: torch.Tensor,
    alpha_prod_t_prev: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """The transfer function phi(x_t, eps, t, t - delta) of PNDM (Liu et al. 2022, eq. 9)."""
    if prediction_type == "v_prediction":
        model_output = eps_from_roots_vp(
            model_output, sample, alpha_prod_t**0.5, (1 - alpha_prod_t) ** 0.5, prediction_type
        )
    elif prediction_type != "epsilon":
        raise ValueError(f"PNDM supports prediction_type 'epsilon' or 'v_prediction', not {prediction_type!r}")
    coefficients = pndm_transfer_coefficients(alpha_prod_t, alpha_prod_t_prev)
    return pndm_transfer_from_coefficients(sample, model_output, *coefficients)


def pndm_transfer_from_coefficients(
    sample: torch.Tensor, eps: torch.Tensor, sample_coeff: torch.Tensor, alpha_gap: torch.Tensor, denom: torch.Tensor
) -> torch.Tensor:
    """:func:`pndm_transfer` given the per-step constants of :func:`pndm_transfer_coefficients`."""
    return sample_coeff * sample - (alpha_gap * eps).div_(denom)


#: 21-point Gauss-Kronrod rule on [-1, 1] (Piessens et al. 1983, QUADPACK ``qk21``): nodes and weights,
#: the positive half and the centre; exact for polynomials up to degree 31.
_KRONROD_21_NODES = np.array(
    [
        0.995657163025808080735527280689003,
        0.973906528517171720077964012084452,
        0.930157491355708226001207180059508,
        0.865063366688984510732096688423493,
        0.780817726586416897063717578345042,
        0.679409568299024406234327365114874,
        0.562757134668604683339000099272694,
        0.433395394129247190799265943165784,
        0.294392862701460198131126603103866,
        0.148874338981631210884826001129720,
        0.0,
    ]
)
_KRONROD_21_WEIGHTS = np.array(
    [
        0.011694638867371874278064396062192,
        0.032558162307964727478818972459390,
        0.054755896574351996031381300244580,
        0.075039674810919952767043140916190,
        0.093125454583697605535065465083366,
        0.109387158802297641899210590325805,
        0.123491976262065851077600525452742,
        0.134709217311473325928054001771707,
        0.142775938577060080797094273138717,
        0.147739104901338491374841515972068,
        0.149445554002916905664936468389821,
    ]
)


def lms_coefficient(sigmas: Sequence[float] | np.ndarray, t: int, order: int, current_order: int) -> float:
    """Integral from sigma_t to sigma_{t+1} of the Lagrange basis polynomial ``current_order`` (linear multistep,
    k-diffusion ``linear_multistep_coeff``).

    The basis polynomial (degree ``order - 1``) is evaluated in float32 on the float32 sigmas and
    integrated with the 21-point Gauss-Kronrod rule, as the reference implementation (SciPy's
    ``quad`` over float32 tensors) does, so that the coefficients agree with Diffusers' to ~1e-12
    (exact float64 integration differs from them by up to ~1e-7, which grows to ~1e-5 in samples).
    """
    s = np.asarray(sigmas, dtype=np.float32)
    a, b = float(s[t]), float(s[t + 1])
    centre, half = 0.5 * (a + b), 0.5 * (b - a)
    x = _KRONROD_21_NODES
    tau = np.concatenate([centre - half * x[:-1], [centre], centre + half * x[:-1]]).astype(np.float32)
    prod = np.ones_like(tau, dtype=np.float32)
    for k in range(order):
        if k != current_order:
            prod = prod * ((tau - s[t - k]) / (s[t - current_order] - s[t - k]))
    f = prod.astype(np.float64)
    n = len(x) - 1
    w = _KRONROD_21_WEIGHTS
    total = w[-1] * f[n] + float(np.sum(w[:-1] * (f[:n] + f[n + 1 :])))
    return float(total * half)


def noise_like(like: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise with the shape, dtype and device of ``like`` (same numbers as Diffusers)."""
    return randn_tensor(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def edm_c_in(sigma: torch.Tensor | float, sigma_data: float) -> torch.Tensor | float:
    """EDM input scaling c_in = 1 / sqrt(sigma^2 + sigma_data^2) (Karras et al. 2022, table 1)."""
    return 1 / (sigma**2 + sigma_data**2) ** 0.5


def edm_scalings(
    sigma: torch.Tensor | float, sigma_data: float, sigma_min: float = 0.0
) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """EDM skip / output scalings (Karras et al. 2022, table 1); with ``sigma_min`` the consistency-model
    boundary form, exact identity at ``sigma_min`` (Song et al. 2023, eq. 7 / appendix C)."""
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def euler_step(sample: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """Euler step of the probability-flow ODE from ``sigma`` to ``sigma_next`` (Karras et al. 2022, alg. 1 line 5),
    written as ``denoised + (sigma_next / sigma) (sample - denoised)`` so that it is one fused kernel."""
    return torch.lerp(denoised, sample, sigma_next / sigma)


def x0_from_roots_vp(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sqrt_alpha: torch.Tensor,
    sqrt_one_minus_alpha: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """Clean sample x0 from a VP model output at ``x = sqrt(a) x0 + sqrt(1 - a) eps``, given the two roots
    (DDPM eq. 15; v-prediction: Salimans & Ho 2022, sec. 4). Rounds as the textbook expression does."""
    if prediction_type == "epsilon":
        return (sample - sqrt_one_minus_alpha * model_output).div_(sqrt_alpha)
    if prediction_type == "sample":
        return model_output
    if prediction_type == "v_prediction":
        return sqrt_alpha * sample - sqrt_one_minus_alpha * model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose 'epsilon', 'sample' or 'v_prediction'")


def eps_from_roots_vp(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    sqrt_alpha: torch.Tensor,
    sqrt_one_minus_alpha: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """The noise eps implied by a VP model output, given the roots of :func:`x0_from_roots_vp`."""
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "sample":
        return (sample - sqrt_alpha * model_output).div_(sqrt_one_minus_alpha)
    if prediction_type == "v_prediction":
        return sqrt_alpha * model_output + sqrt_one_minus_alpha * sample
    raise ValueError(f"unknown prediction_type {prediction_type!r}; choose 'epsilon', 'sample' or 'v_prediction'")
