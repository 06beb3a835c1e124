"""ValueGuidedRLPipeline against Diffusers' experimental pipeline, with a toy environment (no gym)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch


def _plan(pipe: Any, obs: np.ndarray, seed: int, **kw: Any) -> np.ndarray:
    torch.manual_seed(seed)  # Diffusers draws from torch's global RNG
    return np.asarray(pipe(obs, **kw))


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 4, "planning_horizon": 16},
        {"batch_size": 3, "planning_horizon": 8, "n_guide_steps": 1, "scale": 0.5},
    ],
    ids=["default-guidance", "one-guide-step"],
)
def test_parity_with_diffusers(rl_pair: tuple[Any, Any, Any], options: dict[str, Any]) -> None:
    from difflux_pipelines_classic import ValueGuidedRLPipeline

    ref, ours, _ = rl_pair
    assert type(ours) is ValueGuidedRLPipeline
    obs = np.array([0.3, -1.2, 0.05, 2.0], dtype=np.float32)
    a, b = _plan(ref, obs, 0, **options), _plan(ours, obs, 0, **options)
    assert a.shape == b.shape == (2,)
    assert np.abs(a - b).max() <= 1e-4


def test_generator_makes_plans_reproducible(rl_pair: tuple[Any, Any, Any]) -> None:
    _, ours, _ = rl_pair
    obs = np.zeros(4, dtype=np.float32)
    kw = {"batch_size": 2, "planning_horizon": 8, "n_guide_steps": 1}
    first = ours(obs, generator=torch.Generator().manual_seed(3), **kw)
    torch.manual_seed(99)  # the global RNG does not matter with a generator
    assert np.array_equal(first, ours(obs, generator=torch.Generator().manual_seed(3), **kw))
    unguided = ours(obs, generator=torch.Generator().manual_seed(3), batch_size=2, planning_horizon=8, n_guide_steps=0)
    assert unguided.shape == (2,) and np.isfinite(unguided).all()


def test_saves_without_the_environment_and_loads_both_ways(
    cl: Any, rl_pair: tuple[Any, Any, Any], tmp_path: Any
) -> None:
    import json

    from diffusers.experimental import ValueGuidedRLPipeline as Ref

    _, ours, _ = rl_pair
    ours.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "model_index.json").read_text())["env"] == [None, None]
    assert ours.env is not None  # still attached after saving
    again = cl.load_difflux(tmp_path / "saved", env=ours.env)
    back = Ref.from_pretrained(tmp_path / "saved", env=ours.env)
    back.set_progress_bar_config(disable=True)
    obs = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    kw = {"batch_size": 2, "planning_horizon": 8, "n_guide_steps": 1}
    assert np.abs(_plan(back, obs, 4, **kw) - _plan(again, obs, 4, **kw)).max() <= 1e-4


def test_statistics_come_from_the_environment(rl_pair: tuple[Any, Any, Any]) -> None:
    ref, ours, _ = rl_pair
    for key in ("observations", "actions", "rewards"):
        assert np.isclose(ours.means[key], ref.means[key]) and np.isclose(ours.stds[key], ref.stds[key])
    assert "name" not in ours.means and (ours.state_dim, ours.action_dim) == (4, 2)
    x = np.array([1.0, 2.0])
    assert np.allclose(ours.de_normalize(ours.normalize(x, "actions"), "actions"), x)


def test_bad_environments_and_inputs(cl: Any, rl_pair: tuple[Any, Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from difflux_pipelines_classic import ValueGuidedRLPipeline

    _, ours, _ = rl_pair
    with pytest.raises(TypeError, match="get_dataset"):
        ValueGuidedRLPipeline(ours.value_function, ours.unet, ours.scheduler, env=object())

    class NoActions(cl.ToyEnv):
        def get_dataset(self) -> dict[str, Any]:
            return {"observations": np.zeros((3, 4))}

    with pytest.raises(KeyError, match="actions"):
        ValueGuidedRLPipeline(ours.value_function, ours.unet, ours.scheduler, env=NoActions())
    with pytest.raises(ValueError, match="no env"):
        ValueGuidedRLPipeline(ours.value_function, ours.unet, ours.scheduler)(np.zeros(4))
    calls: list[str] = []
    for name in ("unet", "value_function"):
        monkeypatch.setattr(getattr(ours, name), "forward", lambda *a, _n=name, **k: calls.append(_n))
    for kwargs, match in (
        ({"obs": np.zeros(3)}, "4 finite numbers"),
        ({"obs": np.full(4, np.nan)}, "4 finite numbers"),
        ({"obs": np.zeros(4), "batch_size": 0}, "batch_size"),
        ({"obs": np.zeros(4), "planning_horizon": 2.5}, "planning_horizon"),
        ({"obs": np.zeros(4), "n_guide_steps": -1}, "n_guide_steps"),
        ({"obs": np.zeros(4), "scale": float("inf")}, "scale"),
    ):
        with pytest.raises(ValueError, match=match):
            ours(**kwargs)
    assert calls == []
