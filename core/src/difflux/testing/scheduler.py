"""Conformance kit for schedulers: subclass :class:`SchedulerConformance` in a plugin's tests.

::

    class TestMyScheduler(SchedulerConformance):
        scheduler_class = MyScheduler
        configs = [{}, {"prediction_type": "v_prediction"}]

Every test runs once per entry of ``configs`` (config overrides on top of the defaults). The
kit checks the documented scheduler contract only (docs/schedulers.md, "The scheduler contract":
``order``, ``timesteps``, ``set_timesteps``, ``set_begin_index``, ``step_index``, ``step``,
``scale_model_input``, ``add_noise``, the config round trip, and the errors it names); numerical
parity with a reference implementation belongs in the plugin's own tests.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from ..protocols import Scheduler
from ..schedulers import SchedulerMixin, SchedulerOutput

__all__ = ["SchedulerConformance"]


class SchedulerConformance:
    """Base test class (no ``Test`` prefix, so pytest collects only subclasses)."""

    #: the scheduler under test
    scheduler_class: ClassVar[type[SchedulerMixin]]
    #: config override sets; each test runs for every one
    configs: ClassVar[list[dict[str, Any]]] = [{}]
    #: steps used by the sampling-loop checks
    num_inference_steps: ClassVar[int] = 10
    #: latent shape used by the checks
    sample_shape: ClassVar[tuple[int, ...]] = (2, 4, 8, 8)
    #: whether the scheduler implements ``add_noise`` (the variance-exploding SDE samplers may not)
    supports_add_noise: ClassVar[bool] = True
    #: whether ``step`` rejects a timestep that is not in the schedule
    rejects_unknown_timestep: ClassVar[bool] = True

    # -- hooks a subclass may override ------------------------------------------------------

    def make_scheduler(self, overrides: dict[str, Any]) -> Any:
        return self.scheduler_class(**overrides)

    def model_output(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        """A deterministic stand-in for a denoiser."""
        t = float(timestep) if not isinstance(timestep, torch.Tensor) else float(timestep.float().mean())
        return 0.1 * sample + 0.05 * torch.cos(sample * 3.0 + t / 100.0)

    def expected_num_timesteps(self, scheduler: Any, num_inference_steps: int) -> int:
        """Length of ``timesteps`` after ``set_timesteps(n)``: ``n`` steps of ``order`` evaluations."""
        return 1 + (num_inference_steps - 1) * int(scheduler.order)

    def begin_index_for(self, scheduler: Any, num_inference_steps: int) -> int:
        """A step boundary half-way (the first call of a step): ``order * (n // 2)`` in an interleaved
        schedule of ``1 + (n - 1) * order`` entries, else ``n // 2``."""
        order = int(scheduler.order)
        interleaved = len(scheduler.timesteps) >= 1 + (num_inference_steps - 1) * order
        return order * (num_inference_steps // 2) if interleaved else num_inference_steps // 2

    def initial_sample(self, scheduler: Any, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(self.sample_shape, generator=gen) * float(scheduler.init_noise_sigma)

    def run_loop(self, scheduler: Any, seed: int = 0, return_dict: bool = True) -> torch.Tensor:
        scheduler.set_timesteps(self.num_inference_steps)
        sample = self.initial_sample(scheduler, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(sample, t)
            out = scheduler.step(self.model_output(model_in, t), t, sample, generator=gen, return_dict=return_dict)
            sample = out.prev_sample if return_dict else out[0]
        return sample

    # -- fixtures ------------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        # One run of every test per config override set.
        if "overrides" in metafunc.fixturenames:
            ids = [",".join(f"{k}={v}" for k, v in c.items()) or "default" for c in self.configs]
            metafunc.parametrize("overrides", [dict(c) for c in self.configs], ids=ids)

    @pytest.fixture
    def scheduler(self, overrides: dict[str, Any]) -> Any:
        return self.make_scheduler(overrides)

    # -- the checks ----------------------------------------------------------------------------

    def test_satisfies_protocol(self, scheduler: Any) -> None:
        scheduler.set_timesteps(self.num_inference_steps)
        assert isinstance(scheduler, Scheduler)
        assert isinstance(scheduler.order, int) and scheduler.order >= 1

    def test_config_round_trip(self, scheduler: Any, tmp_path: Path) -> None:
        scheduler.save_pretrained(tmp_path)
        data = json.loads((tmp_path / "scheduler_config.json").read_text())
        assert data["_class_name"] == self.scheduler_class.__name__
        assert "_diffusers_version" in data
        loaded = self.scheduler_class.from_pretrained(tmp_path)
        assert type(loaded) is self.scheduler_class
        assert json.loads(loaded.to_json_string()) == json.loads(scheduler.to_json_string())

    def test_config_with_extra_keys_loads(self, scheduler: Any, tmp_path: Path) -> None:
        data = json.loads(scheduler.to_json_string())
        data["_diffusers_version"] = "0.99.0"
        data["an_option_from_the_future"] = 3
        (tmp_path / "scheduler_config.json").write_text(json.dumps(data))
        loaded = self.scheduler_class.from_pretrained(tmp_path)
        assert loaded.config["an_option_from_the_future"] == 3
        for key, value in scheduler.config.items():
            if key.startswith("_"):  # bookkeeping such as _use_default_values, not settings
                continue
            assert json.dumps(loaded.config[key], default=str) == json.dumps(value, default=str), key

    def test_from_config(self, scheduler: Any) -> None:
        again = self.scheduler_class.from_config(scheduler.config)
        assert dict(again.config) == dict(scheduler.config) or json.loads(again.to_json_string()) == json.loads(
            scheduler.to_json_string()
        )

    def test_timesteps(self, scheduler: Any) -> None:
        n = self.num_inference_steps
        scheduler.set_timesteps(n)
        assert isinstance(scheduler.timesteps, torch.Tensor)
        assert scheduler.timesteps.ndim == 1
        assert len(scheduler.timesteps) == self.expected_num_timesteps(scheduler, n)

    def test_step_before_set_timesteps(self, scheduler: Any) -> None:
        # A fresh scheduler either steps on the training schedule it holds in ``timesteps``, or raises an
        # error that names set_timesteps.
        sample = self.initial_sample(scheduler)
        fresh = scheduler.timesteps
        assert isinstance(fresh, torch.Tensor) and fresh.ndim == 1
        t = fresh[0] if len(fresh) else torch.tensor(1)
        try:
            out = scheduler.step(self.model_output(sample, t), t, sample)
        except (RuntimeError, ValueError) as exc:
            assert "set_timesteps" in str(exc), f"unclear error before set_timesteps: {exc}"
            return
        assert out.prev_sample.shape == sample.shape
        assert torch.isfinite(out.prev_sample).all()

    @pytest.mark.parametrize("steps", [0, -1])
    def test_too_few_steps_raises(self, scheduler: Any, steps: int) -> None:
        with pytest.raises(ValueError, match="num_inference_steps"):
            scheduler.set_timesteps(steps)

    def test_too_many_steps_raises(self, scheduler: Any) -> None:
        train = scheduler.config.get("num_train_timesteps")
        if train is None:
            pytest.skip("no num_train_timesteps in this scheduler's config")
        with pytest.raises(ValueError, match="num_inference_steps"):
            scheduler.set_timesteps(int(train) + 1)

    def test_unknown_timestep_raises(self, scheduler: Any) -> None:
        if not self.rejects_unknown_timestep:
            pytest.skip("this scheduler accepts any timestep")
        scheduler.set_timesteps(self.num_inference_steps)
        sample = torch.zeros(self.sample_shape)
        known = set(scheduler.timesteps.tolist())
        bogus = max(known) + 0.5 if scheduler.timesteps.is_floating_point() else int(max(known)) + 1
        while bogus in known:
            bogus += 1
        t = torch.tensor(bogus, dtype=scheduler.timesteps.dtype)
        with pytest.raises(ValueError, match="not in the schedule"):
            scheduler.step(self.model_output(sample, t), t, sample)

    def test_step_shape_and_dtype(self, scheduler: Any) -> None:
        scheduler.set_timesteps(self.num_inference_steps)
        sample = self.initial_sample(scheduler)
        t = scheduler.timesteps[0]
        model_in = scheduler.scale_model_input(sample, t)
        assert model_in.shape == sample.shape and model_in.dtype == sample.dtype
        out = scheduler.step(self.model_output(model_in, t), t, sample, generator=torch.Generator().manual_seed(0))
        assert isinstance(out, SchedulerOutput)
        assert out.prev_sample.shape == sample.shape
        assert out.prev_sample.dtype == sample.dtype
        if out.pred_original_sample is not None:
            assert out.pred_original_sample.shape == sample.shape

    def test_full_loop_is_finite(self, scheduler: Any) -> None:
        final = self.run_loop(scheduler)
        assert final.shape == self.sample_shape
        assert torch.isfinite(final).all()

    def test_deterministic_with_seeded_generator(self, scheduler: Any) -> None:
        first = self.run_loop(copy.deepcopy(scheduler), seed=3)
        second = self.run_loop(copy.deepcopy(scheduler), seed=3)
        assert torch.equal(first, second)

    def test_return_dict_false_gives_tuple(self, scheduler: Any) -> None:
        as_dict = self.run_loop(copy.deepcopy(scheduler), seed=5, return_dict=True)
        scheduler.set_timesteps(self.num_inference_steps)
        sample = self.initial_sample(scheduler, 5)
        t = scheduler.timesteps[0]
        out = scheduler.step(self.model_output(sample, t), t, sample, return_dict=False)
        assert isinstance(out, tuple) and isinstance(out[0], torch.Tensor)
        as_tuple = self.run_loop(copy.deepcopy(scheduler), seed=5, return_dict=False)
        assert torch.equal(as_dict, as_tuple)

    def test_add_noise_shape(self, scheduler: Any) -> None:
        if not self.supports_add_noise:
            pytest.skip("this scheduler has no add_noise")
        scheduler.set_timesteps(self.num_inference_steps)
        gen = torch.Generator().manual_seed(0)
        original = torch.randn(self.sample_shape, generator=gen)
        noise = torch.randn(self.sample_shape, generator=gen)
        t = scheduler.timesteps[len(scheduler.timesteps) // 2].repeat(self.sample_shape[0])
        noisy = scheduler.add_noise(original, noise, t)
        assert noisy.shape == original.shape
        assert not torch.equal(noisy, original)

    def test_set_begin_index(self, scheduler: Any) -> None:
        # The step index counts from the begin index, one per ``step`` call, whatever the timestep values.
        n = self.num_inference_steps
        scheduler.set_timesteps(n)
        total = len(scheduler.timesteps)
        begin = self.begin_index_for(scheduler, n)
        scheduler.set_begin_index(begin)
        assert scheduler.begin_index == begin
        sample = self.initial_sample(scheduler)
        gen = torch.Generator().manual_seed(0)
        for k, t in enumerate(scheduler.timesteps[begin:]):
            model_in = scheduler.scale_model_input(sample, t)
            sample = scheduler.step(self.model_output(model_in, t), t, sample, generator=gen).prev_sample
            assert scheduler.step_index == begin + k + 1
        assert scheduler.step_index == total
        assert torch.isfinite(sample).all()

    def test_set_begin_index_out_of_range_raises(self, scheduler: Any) -> None:
        scheduler.set_timesteps(self.num_inference_steps)
        with pytest.raises(ValueError, match="begin_index"):
            scheduler.set_begin_index(len(scheduler.timesteps))
        with pytest.raises(ValueError, match="begin_index"):
            scheduler.set_begin_index(-1)

    def test_step_index_counts_positions(self, scheduler: Any) -> None:
        # A plain loop: the step index is the loop position (never a look-up of a repeated value).
        scheduler.set_timesteps(self.num_inference_steps)
        assert scheduler.step_index is None
        sample = self.initial_sample(scheduler)
        gen = torch.Generator().manual_seed(0)
        for k, t in enumerate(scheduler.timesteps):
            model_in = scheduler.scale_model_input(sample, t)
            sample = scheduler.step(self.model_output(model_in, t), t, sample, generator=gen).prev_sample
            assert scheduler.step_index == k + 1

    def test_set_timesteps_resets_step_state(self, scheduler: Any) -> None:
        first = self.run_loop(copy.deepcopy(scheduler), seed=7)
        scheduler.set_timesteps(self.num_inference_steps)
        scheduler.set_begin_index(0)
        again = self.run_loop(scheduler, seed=7)  # run_loop calls set_timesteps: begin index and history reset
        assert scheduler.begin_index is None or scheduler.begin_index == 0
        assert torch.equal(first, again)
