"""Flax schedulers against difflux's PyTorch schedulers: same config, same model, same numbers."""

from __future__ import annotations

from typing import Any

import difflux_schedulers.sampling as sampling
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from difflux.registry import import_ref
from difflux_flax import schedulers as fs

SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}

CASES: list[tuple[str, dict[str, Any], int]] = [
    ("FlaxDDIMScheduler", {**SD, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}, 6),
    ("FlaxDDIMScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 5),
    ("FlaxDDPMScheduler", {**SD, "clip_sample": True}, 5),
    ("FlaxPNDMScheduler", {**SD, "skip_prk_steps": True, "steps_offset": 1}, 7),
    ("FlaxPNDMScheduler", {**SD, "skip_prk_steps": True, "prediction_type": "v_prediction"}, 6),
    ("FlaxLMSDiscreteScheduler", SD, 6),
    ("FlaxEulerDiscreteScheduler", {**SD, "timestep_spacing": "leading", "steps_offset": 1}, 5),
    ("FlaxEulerDiscreteScheduler", {**SD, "use_karras_sigmas": True, "prediction_type": "v_prediction"}, 5),
    ("FlaxDPMSolverMultistepScheduler", SD, 6),
    ("FlaxDPMSolverMultistepScheduler", {**SD, "solver_order": 3, "solver_type": "heun"}, 6),
    ("FlaxDPMSolverMultistepScheduler", {**SD, "use_karras_sigmas": True, "lower_order_final": False}, 5),
]


def _model(x: Any, t: Any, lib: Any) -> Any:
    """A fixed nonlinear 'model' of sample and timestep, the same in torch and jax."""
    return 0.3 * lib.tanh(x) + 0.01 * (t / 100.0) * x - 0.05


def _torch_loop(name: str, config: dict[str, Any], n: int, x: np.ndarray, noises: np.ndarray) -> np.ndarray:
    flax_cls = getattr(fs, name)
    torch_cls = import_ref(flax_cls.torch_scheduler)
    sched = torch_cls.from_config(config)
    sched.set_timesteps(n)
    sample = torch.from_numpy(x) * float(sched.init_noise_sigma)
    for i, t in enumerate(sched.timesteps):
        out = _model(sched.scale_model_input(sample, t), float(t), torch)
        # the same noise on both sides: the stochastic samplers draw through sampling.noise_like
        original, noise = sampling.noise_like, torch.from_numpy(noises[i])
        sampling.noise_like = lambda like, generator, _n=noise: _n  # type: ignore[assignment]
        try:
            sample = sched.step(out, t, sample).prev_sample
        finally:
            sampling.noise_like = original
    return sample.numpy()


def _flax_loop(name: str, config: dict[str, Any], n: int, x: np.ndarray, noises: np.ndarray) -> np.ndarray:
    sched = getattr(fs, name).from_config(config)
    state = sched.set_timesteps(sched.create_state(), n, x.shape)
    noise_arr = jnp.asarray(noises)

    @jax.jit
    def run(sample: jax.Array, state: fs.FlaxSchedulerState) -> jax.Array:
        def body(i: jax.Array, carry: tuple[jax.Array, fs.FlaxSchedulerState]) -> Any:
            sample, state = carry
            t = state.timesteps[i]
            out = _model(sched.scale_model_input(state, sample, t), t.astype(jnp.float32), jnp)
            res = sched.step(state, out, t, sample, noise=noise_arr[i])
            return res.prev_sample, res.state

        sample = sample * state.init_noise_sigma
        return jax.lax.fori_loop(0, state.timesteps.shape[0], body, (sample, state))[0]

    return np.asarray(run(jnp.asarray(x), state))


@pytest.mark.parametrize(("name", "config", "steps"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_flax_scheduler_matches_pytorch(name: str, config: dict[str, Any], steps: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    noises = rng.standard_normal((steps + 2, 2, 4, 8, 8)).astype(np.float32)
    expected = _torch_loop(name, config, steps, x, noises)
    got = _flax_loop(name, config, steps, x, noises)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, atol=2e-5 * scale, rtol=0)


def test_state_is_a_pytree_and_timesteps_match() -> None:
    sched = fs.FlaxDDIMScheduler(**SD, steps_offset=1)
    state = sched.set_timesteps(sched.create_state(), 10, (1, 4, 8, 8))
    torch_sched = import_ref(sched.torch_scheduler)(**SD, steps_offset=1)
    torch_sched.set_timesteps(10)
    assert np.asarray(state.timesteps).tolist() == torch_sched.timesteps.tolist()
    leaves = jax.tree_util.tree_leaves(state)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)


def test_save_and_load_round_trip(tmp_path: Any) -> None:
    sched = fs.FlaxEulerDiscreteScheduler(**SD)
    sched.save_pretrained(tmp_path)
    text = (tmp_path / "scheduler_config.json").read_text()
    assert '"_class_name": "EulerDiscreteScheduler"' in text
    again, state = fs.FlaxEulerDiscreteScheduler.from_pretrained(tmp_path)
    assert again.config.beta_end == 0.012
    assert int(state.step_index) == 0


def test_unsupported_options_are_refused() -> None:
    with pytest.raises(ValueError, match="skip_prk_steps"):
        fs.FlaxPNDMScheduler(skip_prk_steps=False)
    with pytest.raises(ValueError, match="algorithm_type"):
        fs.FlaxDPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++")
    with pytest.raises(ValueError, match="variance_type"):
        fs.FlaxDDPMScheduler(variance_type="learned")


def test_stochastic_step_needs_a_key() -> None:
    sched = fs.FlaxDDPMScheduler()
    state = sched.set_timesteps(sched.create_state(), 3, (1, 2))
    x = jnp.ones((1, 2))
    with pytest.raises(ValueError, match="key="):
        sched.step(state, x, state.timesteps[0], x)
    a = sched.step(state, x, state.timesteps[0], x, key=jax.random.key(0)).prev_sample
    b = sched.step(state, x, state.timesteps[0], x, key=jax.random.key(0)).prev_sample
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
