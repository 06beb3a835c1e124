"""The pure schedule and step helpers, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from difflux_schedulers import sampling, schedules


@pytest.mark.parametrize("q", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_beta_ppf_closed_forms(q: float) -> None:
    assert schedules.beta_ppf(q, 1.0, 1.0) == pytest.approx(q, abs=1e-12)  # uniform
    assert schedules.beta_ppf(q, 2.0, 1.0) == pytest.approx(math.sqrt(q), abs=1e-12)  # cdf x^2
    assert schedules.beta_ppf(q, 1.0, 3.0) == pytest.approx(1 - (1 - q) ** (1 / 3), abs=1e-12)  # cdf 1-(1-x)^3


def test_beta_ppf_symmetric_case() -> None:
    assert schedules.beta_ppf(0.5, 0.6, 0.6) == pytest.approx(0.5, abs=1e-12)
    for q in (0.05, 0.2, 0.4):
        assert schedules.beta_ppf(q, 0.6, 0.6) + schedules.beta_ppf(1 - q, 0.6, 0.6) == pytest.approx(1.0, abs=1e-12)


def test_beta_sigmas_span_the_range() -> None:
    sig = schedules.beta_sigmas(0.03, 14.6, 8)
    assert sig[0] == pytest.approx(14.6) and sig[-1] == pytest.approx(0.03)
    assert np.all(np.diff(sig) < 0)


def test_karras_and_exponential_sigmas() -> None:
    k = schedules.karras_sigmas(0.1, 10.0, 5, rho=7.0)
    assert k[0] == pytest.approx(10.0) and k[-1] == pytest.approx(0.1)
    np.testing.assert_allclose(np.diff(k ** (1 / 7)), np.full(4, (0.1 ** (1 / 7) - 10 ** (1 / 7)) / 4))
    e = schedules.exponential_sigmas(0.1, 10.0, 5)
    np.testing.assert_allclose(np.diff(np.log(e)), np.full(4, math.log(0.01) / 4))


@pytest.mark.parametrize("steps", [0, -3])
def test_check_num_inference_steps_too_few(steps: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        schedules.check_num_inference_steps(steps, 1000)


def test_check_num_inference_steps_too_many() -> None:
    with pytest.raises(ValueError, match="larger than num_train_timesteps=1000"):
        schedules.check_num_inference_steps(1001, 1000)


def test_spacings() -> None:
    assert schedules.spaced_timesteps(4, 1000, "leading", 1).tolist() == [751, 501, 251, 1]
    assert schedules.spaced_timesteps(4, 1000, "trailing").tolist() == [999, 749, 499, 249]
    assert schedules.spaced_timesteps(4, 1000, "linspace").tolist() == [999, 666, 333, 0]
    with pytest.raises(ValueError, match="timestep_spacing"):
        schedules.spaced_timesteps(4, 1000, "uniform")


def test_zero_terminal_snr() -> None:
    betas = schedules.make_betas(1000, 0.00085, 0.012, "scaled_linear")
    ac = schedules.alphas_cumprod_from_betas(schedules.rescale_zero_terminal_snr(betas))
    assert float(ac[-1]) == pytest.approx(0.0, abs=1e-12)
    assert float(ac[0]) == pytest.approx(float(1 - betas[0]), rel=1e-5)


def test_sigma_to_t_inverts_interpolation() -> None:
    ac = schedules.alphas_cumprod_from_betas(schedules.make_betas(1000, 0.0001, 0.02, "linear"))
    sig = schedules.sigmas_from_alphas_cumprod(ac).double().numpy()
    t = np.array([0.0, 10.5, 500.25, 999.0])
    s = np.exp(np.interp(t, np.arange(1000), np.log(sig)))
    np.testing.assert_allclose(schedules.sigma_to_t(s, np.log(sig)), t, atol=1e-6)


def test_lms_coefficient_closed_forms() -> None:
    s = np.array([10.0, 6.0, 3.0, 1.0, 0.0])
    assert sampling.lms_coefficient(s, 0, 1, 0) == pytest.approx(s[1] - s[0])
    # order 2 at t=1: the linear Lagrange basis through s[1] (k=0) and s[0] (k=1) over [s[1], s[2]]
    a, b, n0, n1 = s[1], s[2], s[1], s[0]
    l0 = ((b - n1) ** 2 - (a - n1) ** 2) / (2 * (n0 - n1))
    l1 = ((b - n0) ** 2 - (a - n0) ** 2) / (2 * (n1 - n0))
    assert sampling.lms_coefficient(s, 1, 2, 0) == pytest.approx(l0)
    assert sampling.lms_coefficient(s, 1, 2, 1) == pytest.approx(l1)
    # the weights of any order sum to the interval length (they integrate a partition of unity)
    assert sum(sampling.lms_coefficient(s, 3, 4, k) for k in range(4)) == pytest.approx(s[4] - s[3])


def test_ancestral_step_preserves_variance() -> None:
    up, down = sampling.get_ancestral_step(torch.tensor(5.0), torch.tensor(2.0))
    assert float(up**2 + down**2) == pytest.approx(4.0)
    up, down = sampling.get_ancestral_step(torch.tensor(5.0), torch.tensor(2.0), eta=0.0)
    assert float(up) == 0.0 and float(down) == pytest.approx(2.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_predict_x0_recovers_the_clean_sample(prediction_type: str) -> None:
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
    a = torch.tensor(0.3)
    xt = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    out = {"epsilon": eps, "sample": x0, "v_prediction": a**0.5 * eps - (1 - a) ** 0.5 * x0}[prediction_type]
    got_x0, got_eps = sampling.predict_x0_eps_vp(out, xt, a, prediction_type)
    torch.testing.assert_close(got_x0, x0)
    torch.testing.assert_close(got_eps, eps)


def test_threshold_sample_bounds() -> None:
    x = torch.linspace(-3, 3, 2 * 4 * 4).reshape(2, 4, 2, 2)
    out = sampling.threshold_sample(x, 0.9, 2.5)
    assert out.abs().max() <= 1.0 + 1e-6
    assert torch.equal(sampling.threshold_sample(x * 0.1, 0.9, 2.5), x * 0.1)  # s clamps to 1: plain clipping
