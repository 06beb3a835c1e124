"""ConfigMixin: Diffusers JSON configs, validated, round-tripped, and readable by diffusers itself."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import pytest
from difflux.config import DIFFUSERS_FORMAT_VERSION, ConfigMixin, FrozenConfig, read_json
from difflux.errors import ConfigError


class ToyScheduler(ConfigMixin):
    config_name = "scheduler_config.json"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: Literal["linear", "scaled_linear"] = "linear",
        beta_start: float = 0.0001,
        trained_betas: list[float] | None = None,
    ) -> None:
        self.ready = True


class ToyModel(ConfigMixin):
    ignore_for_config = frozenset({"callback"})

    def __init__(self, channels: int, sizes: tuple[int, ...] = (1, 2), callback: object = None) -> None:
        self.callback = callback


# -- round trips ---------------------------------------------------------------------------------


def test_round_trip_through_a_json_file(tmp_path: Path) -> None:
    sched = ToyScheduler(num_train_timesteps=10, beta_schedule="scaled_linear", trained_betas=[0.1, 0.2])
    path = sched.save_config(tmp_path / "scheduler")
    assert path == tmp_path / "scheduler" / "scheduler_config.json"
    written = json.loads(path.read_text())
    assert written == {
        "_class_name": "ToyScheduler",
        "_diffusers_version": DIFFUSERS_FORMAT_VERSION,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.0001,
        "num_train_timesteps": 10,
        "trained_betas": [0.1, 0.2],
    }
    loaded = ToyScheduler.from_config(ToyScheduler.load_config(tmp_path / "scheduler"))
    assert dict(loaded.config) == dict(sched.config)
    assert loaded.ready
    # Also through the JSON file path, and the string form is what was written.
    assert ToyScheduler.load_config(path) == written
    assert json.loads(sched.to_json_string()) == written


def test_positional_arguments_and_defaults_are_recorded_and_tuples_written_as_lists(tmp_path: Path) -> None:
    model = ToyModel(3, callback=print)
    assert dict(model.config) == {"channels": 3, "sizes": (1, 2)}  # callback is ignored for config
    model.save_config(tmp_path)
    assert read_json(tmp_path / "config.json")["sizes"] == [1, 2]
    again = ToyModel.from_config(ToyModel.load_config(tmp_path))
    assert again.config["channels"] == 3 and tuple(again.config["sizes"]) == (1, 2)


def test_from_config_with_overrides() -> None:
    base = ToyScheduler(num_train_timesteps=10)
    derived = ToyScheduler.from_config(base.config, beta_schedule="scaled_linear")
    assert derived.config.beta_schedule == "scaled_linear"
    assert derived.config.num_train_timesteps == 10
    assert base.config.beta_schedule == "linear"
    # Overrides are validated like any argument.
    with pytest.raises(ConfigError, match="ToyScheduler"):
        ToyScheduler.from_config(base.config, num_train_timesteps="many")


def test_config_is_read_only() -> None:
    sched = ToyScheduler()
    with pytest.raises(TypeError, match="read-only"):
        sched.config.num_train_timesteps = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        sched.config["num_train_timesteps"] = 5  # type: ignore[index]
    copy = sched.config.to_dict()
    copy["num_train_timesteps"] = 5
    assert sched.config.num_train_timesteps == 1000
    assert isinstance(sched.config, FrozenConfig)
    with pytest.raises(AttributeError, match="no key 'missing'"):
        _ = sched.config.missing


# -- unknown keys ------------------------------------------------------------------------------


def test_unknown_keys_are_kept_written_back_and_reported_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = {"num_train_timesteps": 20, "legacy_flag_for_test": True, "_private_note": "x", "_class_name": "Other"}
    with caplog.at_level(logging.WARNING, logger="difflux"):
        first = ToyScheduler.from_config(data)
        second = ToyScheduler.from_config(data)
    assert first.config["legacy_flag_for_test"] is True
    assert second.config["_private_note"] == "x"
    reports = [r.getMessage() for r in caplog.records if "legacy_flag_for_test" in r.getMessage()]
    assert len(reports) == 1
    assert "ToyScheduler" in reports[0]
    assert not any("_private_note" in r.getMessage() for r in caplog.records)  # "_" keys are quiet
    first.save_config(tmp_path)
    written = read_json(tmp_path / "scheduler_config.json")
    assert written["legacy_flag_for_test"] is True and written["_private_note"] == "x"
    assert written["_class_name"] == "ToyScheduler"  # format keys describe the writer, not the source


# -- validation errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"beta_schedule": "cosine"}, "beta_schedule"),
        ({"num_train_timesteps": "lots"}, "num_train_timesteps"),
        ({"num_train_timesteps": 1.5}, "num_train_timesteps"),
        ({"trained_betas": ["a"]}, "trained_betas"),
    ],
)
def test_validation_errors_name_class_and_key(kwargs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ToyScheduler(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "ToyScheduler" in message and key in message
    with pytest.raises(ConfigError, match=key):
        ToyScheduler.from_config(kwargs)


def test_valid_values_are_coerced_as_pydantic_does() -> None:
    assert ToyScheduler(num_train_timesteps="12").config.num_train_timesteps == 12  # type: ignore[arg-type]


def test_missing_required_argument_names_the_class() -> None:
    with pytest.raises(TypeError, match=r"ToyModel\(\)"):
        ToyModel()  # type: ignore[call-arg]


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "scheduler_config.json"
    path.write_text('{\n  "num_train_timesteps": 10,\n  "beta_schedule": linear\n}\n')
    with pytest.raises(ConfigError) as info:
        ToyScheduler.load_config(tmp_path)
    assert str(path) in str(info.value) and "line 3" in str(info.value)


def test_missing_config_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"scheduler_config\.json") as info:
        ToyScheduler.load_config(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ConfigError, match="folder does not exist"):
        ToyScheduler.load_config(tmp_path / "nope")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        ToyScheduler.load_config(tmp_path / "list.json")


# -- interop with diffusers ----------------------------------------------------------------------


class DDIMScheduler(ConfigMixin):
    """Same ``__init__`` arguments as diffusers' DDIMScheduler (config only, no maths)."""

    config_name = "scheduler_config.json"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: list[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: Literal["epsilon", "sample", "v_prediction"] = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading",
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        pass


def test_a_diffusers_written_config_loads_with_equal_values(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.DDIMScheduler(
        num_train_timesteps=500, beta_schedule="scaled_linear", prediction_type="v_prediction"
    )
    theirs.save_config(tmp_path)
    with caplog.at_level(logging.WARNING, logger="difflux"):
        ours = DDIMScheduler.from_config(DDIMScheduler.load_config(tmp_path))
    assert caplog.records == []  # nothing unknown in a file diffusers wrote
    expected = {k: v for k, v in theirs.config.items() if not k.startswith("_")}
    assert dict(ours.config) == expected


def test_a_difflux_written_config_loads_in_diffusers_with_equal_values(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    ours = DDIMScheduler(
        num_train_timesteps=64, beta_end=0.012, clip_sample=False, timestep_spacing="trailing", steps_offset=1
    )
    ours.save_config(tmp_path)
    config = diffusers.DDIMScheduler.load_config(tmp_path)
    theirs = diffusers.DDIMScheduler.from_config(config)
    assert {k: theirs.config[k] for k in ours.config} == dict(ours.config)
    assert theirs.config["_class_name"] == "DDIMScheduler"
    # And diffusers writes back exactly what we wrote.
    out = tmp_path / "again"
    theirs.save_config(out)
    assert read_json(out / "scheduler_config.json") == read_json(tmp_path / "scheduler_config.json")


class _Source(ConfigMixin):
    def __init__(self, spacing: str = "leading", steps: int = 1000) -> None:
        pass


class _Target(ConfigMixin):
    def __init__(self, spacing: str = "linspace", steps: int = 1000) -> None:
        pass


def test_swapping_classes_leaves_out_values_that_were_only_defaults() -> None:
    # As in Diffusers: a value the source only had as its default is not forced on the target.
    assert _Target.from_config(_Source().config).config["spacing"] == "linspace"
    assert _Target.from_config(_Source(spacing="trailing").config).config["spacing"] == "trailing"
    # A config read from a file lists its keys explicitly, so they all carry over...
    assert _Target.from_config({"spacing": "leading"}).config["spacing"] == "leading"
    # ...unless the file says, as Diffusers' configs do, that they were defaults.
    diffusers_style = {"spacing": "leading", "steps": 10, "_use_default_values": ["spacing"]}
    rebuilt = _Target.from_config(diffusers_style)
    assert (rebuilt.config["spacing"], rebuilt.config["steps"]) == ("linspace", 10)
    assert "_use_default_values" not in rebuilt.config


def test_swap_matches_diffusers_for_a_default_built_scheduler() -> None:
    import diffusers

    class DDIMLike(ConfigMixin):
        def __init__(self, timestep_spacing: str = "leading", steps_offset: int = 0) -> None:
            pass

    class DPMLike(ConfigMixin):
        def __init__(self, timestep_spacing: str = "linspace", steps_offset: int = 0) -> None:
            pass

    ours = DPMLike.from_config(DDIMLike().config).config["timestep_spacing"]
    theirs = diffusers.DPMSolverMultistepScheduler.from_config(diffusers.DDIMScheduler().config)
    assert ours == theirs.config["timestep_spacing"] == "linspace"
