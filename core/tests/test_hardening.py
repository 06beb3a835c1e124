"""Hardening, by kind: consent before custom code, strict switches, files read safely, values in
range, required components, dtype kinds, errors that name the component, and atomic saves that
respect the folder (symlinks, permissions, cleanup failures)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import pydantic
import pytest
import torch
from difflux import DiffusionPipeline, ModelMixin, SchedulerMixin, hookimpl
from difflux._files import MAX_JSON_BYTES_ENV, read_json
from difflux.config import Bound, ConfigMixin
from difflux.errors import ConfigError, DiffluxError, LoadError, RemoteCodeError
from difflux.options import DISABLE_REMOTE_CODE_ENV, LoadOptions, _switches
from difflux.registry import RegisterComponent, RegisterPipeline, RegisterScheduler, reset_registry

# -- tiny components, registered by a throwaway plugin ------------------------------------------


class Net(ModelMixin):
    def __init__(self, channels: int = 2, hidden: int = 3) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(channels, hidden)
        self.register_buffer("steps", torch.arange(3))


class Sched(SchedulerMixin):
    def __init__(self, num_train_timesteps: int = 10, beta_start: float = 0.001, beta_end: float = 0.02) -> None:
        pass


class Pipe(DiffusionPipeline):
    _optional_components = ("extra",)

    def __init__(
        self, model: Net, scheduler: Sched, extra: Net | None = None, requires_check: bool = True, gain: float = 1.0
    ) -> None:
        super().__init__()
        self.register_modules(model=model, scheduler=scheduler, extra=extra)


class Plugin:
    @hookimpl
    def difflux_register_pipelines(self, register: RegisterPipeline) -> None:
        register(Pipe)

    @hookimpl
    def difflux_register_components(self, register: RegisterComponent) -> None:
        register(Net)

    @hookimpl
    def difflux_register_schedulers(self, register: RegisterScheduler) -> None:
        register(Sched)


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("DIFFLUX_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv(DISABLE_REMOTE_CODE_ENV, raising=False)
    monkeypatch.delenv(MAX_JSON_BYTES_ENV, raising=False)
    reset_registry(extra_plugins=[("hardening", Plugin())])
    yield
    reset_registry()


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A load that blocks (on a FIFO) fails the test after 20 s instead of hanging the run."""

    def fail(signum: int, frame: Any) -> None:
        raise TimeoutError("the call blocked: it opened a FIFO or read a device")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(20)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def make_pipe() -> Pipe:
    torch.manual_seed(0)
    return Pipe(Net(), Sched())


def listing(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (symlinks not followed) with the bytes of regular files."""
    out: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            rel = str(path.relative_to(folder))
            out[rel] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
    return out


# == 1. consent before any code runs ===========================================================


@pytest.mark.parametrize(
    "how", ["custom_pipeline-file", "custom_pipeline-folder", "custom_pipeline-repo", "class_name"]
)
@pytest.mark.parametrize("setting", ["no-trust", "disabled-with-trust"])
def test_custom_code_is_refused_by_the_core_before_any_plugin_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str, setting: str
) -> None:
    make_pipe().save_pretrained(tmp_path / "p")
    marker = tmp_path / "ran"
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    kwargs: dict[str, Any] = {}
    if how == "class_name":
        index = json.loads((tmp_path / "p" / "model_index.json").read_text())
        index["_class_name"] = ["mine", "Mine"]
        (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
        (tmp_path / "p" / "mine.py").write_text(code)
    elif how == "custom_pipeline-repo":
        kwargs["custom_pipeline"] = "someone/community-pipeline"
    else:
        (tmp_path / "code").mkdir()
        (tmp_path / "code" / "pipeline.py").write_text(code)
        kwargs["custom_pipeline"] = str(tmp_path / "code" / ("pipeline.py" if how.endswith("file") else ""))
    asked: list[str] = []

    class Spy:
        @hookimpl
        def difflux_load_pipeline_class(self, folder: Path, index: dict[str, Any], options: LoadOptions) -> None:
            asked.append(str(folder))

    reset_registry(extra_plugins=[("hardening", Plugin()), ("spy", Spy())])
    if setting == "disabled-with-trust":
        monkeypatch.setenv(DISABLE_REMOTE_CODE_ENV, "1")
        kwargs["trust_remote_code"] = True
    expected = DISABLE_REMOTE_CODE_ENV if setting.startswith("disabled") else "trust_remote_code=True"
    with pytest.raises(RemoteCodeError, match=expected):
        DiffusionPipeline.from_pretrained(tmp_path / "p", **kwargs)
    assert asked == [] and not marker.exists()


@pytest.mark.parametrize("value", ["1", "yes", "true", "on", "anything"])
def test_any_setting_of_the_disable_switch_but_off_values_disables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    make_pipe().save_pretrained(tmp_path / "p")
    monkeypatch.setenv(DISABLE_REMOTE_CODE_ENV, value)
    with pytest.raises(RemoteCodeError, match=DISABLE_REMOTE_CODE_ENV):
        DiffusionPipeline.from_pretrained(tmp_path / "p", custom_pipeline="a/b", trust_remote_code=True)


SWITCHES = sorted(_switches())
NOT_BOOLS: list[Any] = ["False", "True", "", "no", 0, 1, 1.0, [], [True]]


def test_every_bool_option_of_load_options_is_a_switch() -> None:
    hints = {f: t for f, t in LoadOptions.__annotations__.items()}
    declared_bool = {f for f, t in hints.items() if t in ("bool", "bool | None")}
    assert set(SWITCHES) == declared_bool
    assert {"trust_remote_code", "use_safetensors", "low_cpu_mem_usage", "local_files_only"} <= set(SWITCHES)


@pytest.mark.parametrize("value", NOT_BOOLS, ids=repr)
@pytest.mark.parametrize("option", SWITCHES)
def test_switches_take_only_bools(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"{option}=.*expected True( or False|, False or None)"):
        LoadOptions(**{option: value})
    assert getattr(LoadOptions(**{option: True}), option) is True
    assert getattr(LoadOptions(**{option: False}), option) is False


@pytest.mark.parametrize("option", SWITCHES)
@pytest.mark.parametrize("entry", ["model", "scheduler", "pipeline"])
def test_switches_are_checked_at_every_entry_before_loading(tmp_path: Path, option: str, entry: str) -> None:
    make_pipe().save_pretrained(tmp_path / "p")
    load: Callable[..., Any] = {
        "model": lambda **kw: Net.from_pretrained(tmp_path / "p" / "model", **kw),
        "scheduler": lambda **kw: Sched.from_pretrained(tmp_path / "p" / "scheduler", **kw),
        "pipeline": lambda **kw: DiffusionPipeline.from_pretrained(tmp_path / "p", **kw),
    }[entry]
    with pytest.raises(ConfigError, match=f"{option}='False'"):
        load(**{option: "False"})


@pytest.mark.parametrize(
    ("what", "option"),
    [("model", "safe_serialization"), ("model", "is_main_process"), ("pipeline", "safe_serialization")],
)
@pytest.mark.parametrize("value", ["False", 0, None])
def test_save_switches_take_only_bools_and_nothing_is_written(
    tmp_path: Path, what: str, option: str, value: Any
) -> None:
    obj: Any = Net() if what == "model" else make_pipe()
    with pytest.raises(ConfigError, match=f"save_pretrained: {option}="):
        obj.save_pretrained(tmp_path / "out", **{option: value})
    assert not (tmp_path / "out").exists()


# == 2. files read safely =======================================================================


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _fifo_link(path: Path) -> None:
    os.mkfifo(path.parent / ".the-fifo")
    path.symlink_to(path.parent / ".the-fifo")


def _big(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path.write_text(json.dumps({"pad": "x" * 5000}))
    monkeypatch.setenv(MAX_JSON_BYTES_ENV, "1000")


#: kind: (make the bad file, words the error must contain)
BAD_FILES: dict[str, tuple[Callable[..., None], str]] = {
    "fifo": (lambda p, mp: _fifo(p), "FIFO"),
    "link-to-fifo": (lambda p, mp: _fifo_link(p), "FIFO"),
    "link-to-dev-zero": (lambda p, mp: p.symlink_to("/dev/zero"), "character device"),
    "folder": (lambda p, mp: p.mkdir(), "a folder"),
    "dangling-link": (lambda p, mp: p.symlink_to(p.parent / "nowhere.json"), "not found"),
    "not-utf8": (lambda p, mp: p.write_bytes(b'{"a": "\xff\xfe"}'), "not UTF-8 text (byte 0xff at offset 7)"),
    "nested-past-the-parser": (lambda p, mp: p.write_text('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}"), "nested"),
    "nested-past-the-limit": (lambda p, mp: p.write_text('{"a": ' + "[" * 100 + "]" * 100 + "}"), "nest"),
    "too-large": (_big, "larger than 1000 bytes"),
    "not-json": (lambda p, mp: p.write_text('{"a": '), "not valid JSON (line 1"),
    "not-an-object": (lambda p, mp: p.write_text("[1, 2]"), "expected a JSON object"),
}


def _saved_model(tmp_path: Path, shards: bool = False) -> Path:
    torch.manual_seed(0)
    Net(channels=8, hidden=16).save_pretrained(tmp_path / "m", max_shard_size=200 if shards else "10GB")
    return tmp_path / "m"


#: reader: (write a good folder and return the JSON file to spoil, load it)
JSON_READERS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], Any]]] = {
    "config.json": (lambda t: _saved_model(t) / "config.json", lambda t: Net.from_pretrained(t / "m")),
    "scheduler_config.json": (
        lambda t: Sched().save_pretrained(t / "s"),
        lambda t: Sched.from_pretrained(t / "s"),
    ),
    "model_index.json": (
        lambda t: make_pipe().save_pretrained(t / "p") / "model_index.json",
        lambda t: DiffusionPipeline.from_pretrained(t / "p"),
    ),
    "weights-index": (
        lambda t: _saved_model(t, shards=True) / "diffusion_pytorch_model.safetensors.index.json",
        lambda t: Net.from_pretrained(t / "m"),
    ),
    "component-config-in-pipeline": (
        lambda t: make_pipe().save_pretrained(t / "p") / "model" / "config.json",
        lambda t: DiffusionPipeline.from_pretrained(t / "p"),
    ),
    "read_json": (lambda t: t / "plain.json", lambda t: read_json(t / "plain.json")),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("reader", sorted(JSON_READERS))
def test_every_json_reader_refuses_every_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str, kind: str
) -> None:
    prepare, load = JSON_READERS[reader]
    target = prepare(tmp_path)
    assert reader == "read_json" or target.is_file()
    if os.path.lexists(target):
        target.unlink()
    make, words = BAD_FILES[kind]
    make(target, monkeypatch)
    with pytest.raises(DiffluxError) as info:
        load(tmp_path)
    assert isinstance(info.value, (ConfigError, LoadError))
    message = str(info.value)
    assert str(target) in message and words in message


@pytest.mark.parametrize("kind", ["fifo", "link-to-fifo", "link-to-dev-zero", "folder", "too-large"])
def test_other_json_files_of_a_component_folder_are_checked_before_any_loader_opens_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Loaders outside difflux (transformers, custom code) read their own JSON files; a FIFO or a
    device among them is refused before any loader runs."""
    folder = make_pipe().save_pretrained(tmp_path / "p")
    target = folder / "model" / "tokenizer_config.json"
    make, words = BAD_FILES[kind]
    make(target, monkeypatch)
    with pytest.raises(ConfigError) as info:
        DiffusionPipeline.from_pretrained(folder)
    assert str(target) in str(info.value) and (words in str(info.value) or "larger than" in str(info.value))


@pytest.mark.parametrize("device_map", [None, "auto"])
@pytest.mark.parametrize("kind", ["fifo", "link-to-fifo", "link-to-dev-zero", "folder"])
@pytest.mark.parametrize("file", ["diffusion_pytorch_model.safetensors", "shard"])
def test_weight_files_must_be_regular_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, file: str, device_map: str | None
) -> None:
    folder = _saved_model(tmp_path, shards=file == "shard")
    target = folder / file if file != "shard" else sorted(folder.glob("diffusion_pytorch_model-*.safetensors"))[0]
    target.unlink()
    BAD_FILES[kind][0](target, monkeypatch)
    with pytest.raises(LoadError) as info:
        Net.from_pretrained(folder, device_map=device_map)
    assert str(target) in str(info.value) and BAD_FILES[kind][1] in str(info.value)


def test_json_size_limit_setting_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.json").write_text("{}")
    monkeypatch.setenv(MAX_JSON_BYTES_ENV, "lots")
    with pytest.raises(ConfigError, match=f"{MAX_JSON_BYTES_ENV}='lots'"):
        read_json(tmp_path / "a.json")
    monkeypatch.setenv(MAX_JSON_BYTES_ENV, "2")
    assert read_json(tmp_path / "a.json") == {}  # exactly at the limit


# == 3. values in range ==========================================================================


class Ranged(ConfigMixin):
    config_bounds = {"rate": Bound(ge=0, le=1), "widths": Bound(ge=1, le=64, max_items=4), "gone": Bound(ge=5)}

    def __init__(
        self,
        count: Any = 1,
        rate: float = 0.5,
        widths: tuple[int, ...] = (8, 16),
        gone: int = 5,
        limit: float = float("inf"),
    ) -> None:
        pass


class RangedChild(Ranged):
    config_bounds = {"gone": None, "limit": Bound(ge=0, allow_inf=True)}

    def __init__(
        self, count: int = 1, rate: float = 0.5, widths: tuple[int, ...] = (8,), gone: int = 0, limit: float = 1.0
    ) -> None:
        pass


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"rate": 1.5}, "rate=1.5: must be <= 1"),
        ({"rate": -0.1}, "rate=-0.1: must be >= 0"),
        ({"rate": float("nan")}, "rate=nan: NaN"),
        ({"rate": float("inf")}, "must be finite"),
        ({"count": float("nan")}, "count=nan: NaN is not a valid value"),  # NaN refused even unbounded
        ({"widths": (8, 10**9)}, "item 1: must be <= 64"),
        ({"widths": (1, 2, 3, 4, 5)}, "5 items, more than the 4 allowed"),
        ({"widths": (0,)}, "item 0: must be >= 1"),
        ({"count": [1.0, [2.0, float("nan")]]}, "NaN"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_bounds_refuse_values_out_of_range(values: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match="invalid config for Ranged") as info:
        Ranged(**values)
    assert words in str(info.value)
    with pytest.raises(ConfigError):
        Ranged.from_config(values)


def test_bounds_merge_along_the_hierarchy_and_can_be_removed() -> None:
    assert Ranged(limit=-float("inf")).config["limit"] == -float("inf")  # an unbounded field
    with pytest.raises(ConfigError, match="gone=0: must be >= 5"):
        Ranged(gone=0)
    assert RangedChild(gone=0).config["gone"] == 0  # removed by the subclass
    assert RangedChild(limit=float("inf")).config["limit"] == float("inf")  # allow_inf
    with pytest.raises(ConfigError, match=r"limit=-1\.0: must be >= 0"):
        RangedChild(limit=-1.0)
    with pytest.raises(ConfigError, match=r"rate=2\.0"):
        RangedChild(rate=2.0)  # inherited


def test_annotated_bounds_and_pydantic_constraints() -> None:
    class Annot(ConfigMixin):
        def __init__(
            self,
            layers: Annotated[int, Bound(ge=1, le=8)] = 2,
            eps: Annotated[float, pydantic.Field(gt=0)] = 1e-5,
            size: Annotated[int, Bound(le=4)] | None = None,
        ) -> None:
            pass

    assert Annot(layers=8, size=4).config["layers"] == 8
    for kwargs, words in (({"layers": 9}, "layers=9: must be <= 8"), ({"eps": 0.0}, "eps"), ({"size": 5}, "size=5")):
        with pytest.raises(ConfigError, match=words):
            Annot(**kwargs)


class SizedNet(ModelMixin):
    def __init__(
        self,
        block_out_channels: tuple[int, ...] = (4, 8),
        layers_per_block: int = 1,
        norm_num_groups: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            torch.nn.Linear(block_out_channels[0], block_out_channels[0]) for _ in range(layers_per_block)
        )


class BetaSched(SchedulerMixin):
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        pass


@pytest.mark.parametrize(
    ("cls", "key", "value"),
    [
        (SizedNet, "layers_per_block", 10**9),
        (SizedNet, "layers_per_block", 0),
        (SizedNet, "block_out_channels", [4, 3_000_000_000]),
        (SizedNet, "block_out_channels", [4] * 65),
        (SizedNet, "norm_num_groups", 2**40),
        (SizedNet, "dropout", 1.5),
        (BetaSched, "beta_start", float("nan")),
        (BetaSched, "beta_start", float("inf")),
        (BetaSched, "beta_end", 2.0),
        (BetaSched, "num_train_timesteps", 10**12),
        (BetaSched, "num_train_timesteps", 0),
    ],
)
def test_core_bounds_of_the_diffusers_keys_are_checked_on_load_and_name_the_file(
    tmp_path: Path, cls: type[Any], key: str, value: Any
) -> None:
    obj = cls()
    folder = obj.save_pretrained(tmp_path / "c")
    file = tmp_path / "c" / cls.config_name
    data = json.loads(file.read_text())
    data[key] = value
    file.write_text(json.dumps(data))
    import time

    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        cls.from_pretrained(tmp_path / "c")
    assert time.perf_counter() - start < 5  # refused before anything is built
    assert str(file) in str(info.value) and f"{key}=" in str(info.value)
    assert folder is not None


@pytest.mark.parametrize("value", ["epsilon", 5, {"a": 1}, [1, 2], [["beta_start"]]], ids=repr)
def test_use_default_values_of_the_wrong_type_is_refused(tmp_path: Path, value: Any) -> None:
    Sched().save_pretrained(tmp_path)
    data = json.loads((tmp_path / "scheduler_config.json").read_text())
    data["_use_default_values"] = value
    (tmp_path / "scheduler_config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"_use_default_values=.*expected a list of config key names"):
        Sched.from_pretrained(tmp_path)


def test_use_default_values_as_a_list_of_names_still_works(tmp_path: Path) -> None:
    loaded = Sched.from_config({"beta_start": 0.5, "_use_default_values": ["beta_start"]})
    assert loaded.config["beta_start"] == 0.001


@pytest.mark.parametrize("entry", [[None, None], ["diffusers", None], [None, "Net"]], ids=str)
@pytest.mark.parametrize("component", ["model", "scheduler"])
def test_a_required_component_written_as_null_is_a_clear_error_at_load(
    tmp_path: Path, component: str, entry: list[Any]
) -> None:
    folder = make_pipe().save_pretrained(tmp_path / "p")
    index = json.loads((folder / "model_index.json").read_text())
    index[component] = entry
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(
        ConfigError, match=rf"entry '{component}' is .*needs the component '{component}'.*optional: extra"
    ):
        DiffusionPipeline.from_pretrained(folder)


def test_an_optional_component_written_as_null_loads_as_none(tmp_path: Path) -> None:
    folder = make_pipe().save_pretrained(tmp_path / "p")
    assert json.loads((folder / "model_index.json").read_text())["extra"] == [None, None]
    assert DiffusionPipeline.from_pretrained(folder).extra is None


def _rewrite_tensor(file: Path, key: str, tensor: torch.Tensor) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(file))
    tensors[key] = tensor
    save_file(tensors, str(file), metadata={"format": "pt"})


@pytest.mark.parametrize(
    ("key", "stored"),
    [
        ("proj.weight", torch.int32),
        ("proj.weight", torch.int64),
        ("proj.weight", torch.uint8),
        ("proj.weight", torch.bool),
        ("proj.bias", torch.int16),
        ("steps", torch.float32),
        ("steps", torch.float16),
    ],
)
def test_a_tensor_of_another_dtype_kind_is_refused_with_its_key(tmp_path: Path, key: str, stored: torch.dtype) -> None:
    folder = _saved_model(tmp_path)
    file = folder / "diffusion_pytorch_model.safetensors"
    shape = Net(channels=8, hidden=16).state_dict()[key].shape
    _rewrite_tensor(file, key, torch.ones(shape).to(stored))
    with pytest.raises(LoadError) as info:
        Net.from_pretrained(folder)
    assert f"key {key!r} is stored as {stored}" in str(info.value) and str(file) in str(info.value)
    model, loading = Net.from_pretrained(folder, output_loading_info=True)
    assert any(key in m for m in loading["error_msgs"])
    assert model.state_dict()[key].dtype == Net(channels=8, hidden=16).state_dict()[key].dtype
    assert not torch.equal(model.state_dict()[key].float(), torch.ones(shape))  # not the reinterpreted bits


def test_integer_widths_within_a_kind_still_load(tmp_path: Path) -> None:
    folder = _saved_model(tmp_path)
    _rewrite_tensor(folder / "diffusion_pytorch_model.safetensors", "steps", torch.tensor([5, 6, 7], dtype=torch.int32))
    loaded = Net.from_pretrained(folder)
    assert loaded.steps.dtype == torch.int64 and loaded.steps.tolist() == [5, 6, 7]


@pytest.mark.parametrize(
    ("torch_dtype", "expected"),
    [
        (None, torch.float32),
        ("auto", torch.float16),
        (torch.bfloat16, torch.bfloat16),
        ({"model": torch.bfloat16}, torch.bfloat16),
    ],
    ids=str,
)
def test_the_torch_dtype_rule_for_models_and_pipelines(tmp_path: Path, torch_dtype: Any, expected: torch.dtype) -> None:
    """``None``: the dtype the class builds in (float32); ``"auto"``: the file's; else the one asked for."""
    pipe = make_pipe()
    pipe.model.to(torch.float16)
    folder = pipe.save_pretrained(tmp_path / "p")
    loaded = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch_dtype)
    assert loaded.model.proj.weight.dtype == expected and loaded.model.steps.dtype == torch.int64
    if not isinstance(torch_dtype, dict):
        assert Net.from_pretrained(folder / "model", torch_dtype=torch_dtype).proj.weight.dtype == expected


@pytest.mark.parametrize(
    "damage", [b"", b"\x80\x02not a pickle", b"PK\x03\x04broken zip"], ids=["empty", "garbage", "broken-zip"]
)
def test_a_pickle_that_fails_to_unpickle_names_the_file_and_the_component(tmp_path: Path, damage: bytes) -> None:
    pipe = make_pipe()
    folder = pipe.save_pretrained(tmp_path / "p", safe_serialization=False)
    weights = folder / "model" / "diffusion_pytorch_model.bin"
    weights.write_bytes(damage)
    with pytest.raises(LoadError) as info:
        DiffusionPipeline.from_pretrained(folder, use_safetensors=False)
    message = str(info.value)
    assert message.startswith("component 'model' (diffusers.Net): ") and str(weights) in message


# == 5. atomic save that respects the folder =====================================================


@pytest.mark.parametrize("what", ["model", "pipeline", "scheduler"])
@pytest.mark.parametrize("link", ["to-existing-folder", "to-new-folder", "chain"])
def test_saving_through_a_symlink_writes_where_it_points_and_keeps_the_link(
    tmp_path: Path, what: str, link: str
) -> None:
    real = tmp_path / "real"
    if link != "to-new-folder":
        real.mkdir()
        (real / "keep.txt").write_text("mine")
    alias = tmp_path / "alias"
    if link == "chain":
        (tmp_path / "middle").symlink_to(real)
        alias.symlink_to(tmp_path / "middle")
    else:
        alias.symlink_to(real)
    obj: Any = {"model": Net(), "pipeline": make_pipe(), "scheduler": Sched()}[what]
    obj.save_pretrained(alias)
    assert alias.is_symlink() and os.readlink(alias) == str(tmp_path / ("middle" if link == "chain" else "real"))
    config = {"model": "config.json", "pipeline": "model_index.json", "scheduler": "scheduler_config.json"}[what]
    assert (real / config).is_file()
    if link != "to-new-folder":
        assert (real / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["real", "alias"] + (["middle"] if link == "chain" else [])
    )
    reloaded: Any = type(obj).from_pretrained(alias)
    assert type(reloaded) is type(obj)


@pytest.mark.parametrize("case", ["read-only-folder", "unwritable-parent", "unwritable-ancestor"])
@pytest.mark.parametrize("what", ["model", "pipeline"])
def test_a_folder_the_user_may_not_replace_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, what: str
) -> None:
    parent = tmp_path / "area"
    parent.mkdir()
    target = {
        "read-only-folder": parent / "out",
        "unwritable-parent": parent / "out",
        "unwritable-ancestor": parent / "a" / "b" / "out",
    }[case]
    if case == "read-only-folder":
        target.mkdir()
        (target / "old.txt").write_text("old")
    locked = target if case == "read-only-folder" else parent
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:  # as a non-root user sees a 0o555 folder
        if Path(path) == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    before = listing(tmp_path)
    obj: Any = Net() if what == "model" else make_pipe()
    with pytest.raises(PermissionError, match=str(target)):
        obj.save_pretrained(target)
    assert listing(tmp_path) == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork to drop privileges")
def test_read_only_folder_is_refused_for_a_real_unprivileged_user(tmp_path: Path) -> None:
    """The same without a stand-in for ``os.access``: as an ordinary user (dropping root when the
    tests run as root), a 0o555 folder is refused and left as it was."""
    import tempfile

    area = Path(tempfile.mkdtemp(prefix="difflux-perm-"))
    try:
        os.chmod(area, 0o777)
        target = area / "out"
        target.mkdir()
        (target / "old.txt").write_text("old")
        os.chmod(target, 0o555)
        user = 65534 if os.geteuid() == 0 else os.geteuid()
        os.chown(target, user, -1) if os.geteuid() == 0 else None
        model = Net()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop privileges, try the save, report how it ended
            os.close(read)
            code = b"?"
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                model.save_pretrained(target)
                code = b"saved"
            except PermissionError:
                code = b"refused"
            except BaseException as exc:  # reported to the parent
                code = repr(exc).encode()[:200]
            finally:
                os.write(write, code)
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        result = os.read(read, 300)
        os.close(read)
        assert result == b"refused", result
        assert sorted(p.name for p in area.iterdir()) == ["out"]
        assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    finally:
        os.chmod(area / "out", 0o755)
        shutil.rmtree(area)


def test_a_failure_removing_the_old_folder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from difflux import serialization

    Net(hidden=3).save_pretrained(tmp_path / "m")
    real_rmtree = shutil.rmtree

    def stubborn(path: Any, *args: Any, **kwargs: Any) -> None:
        if str(path).endswith(".old"):
            handler = kwargs.get("onexc") or kwargs.get("onerror")
            assert handler is not None, "errors must not be ignored"
            error = PermissionError(13, "Permission denied")
            handler(
                os.unlink,
                str(Path(path) / "diffusion_pytorch_model.safetensors"),
                error if "onexc" in kwargs else (PermissionError, error, None),
            )
            return
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(serialization.shutil, "rmtree", stubborn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Net(hidden=5).save_pretrained(tmp_path / "m")
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "could not all be removed" in messages[0] and "Permission denied" in messages[0]
    leftover = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    assert len(leftover) == 1 and str(leftover[0]) in messages[0]
    assert Net.from_pretrained(tmp_path / "m").config["hidden"] == 5  # the save itself stands


@pytest.mark.parametrize("fail_at", ["weights", "config", "rename-in"])
def test_forced_failures_leave_a_symlinked_folder_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    from difflux import serialization

    real = tmp_path / "real"
    Net(hidden=3).save_pretrained(real)
    (tmp_path / "alias").symlink_to(real)
    before = listing(tmp_path)

    def boom(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    if fail_at == "weights":
        monkeypatch.setattr(serialization, "save_state_dict", boom)
        monkeypatch.setattr("difflux.modeling.save_state_dict", boom)
    elif fail_at == "config":
        monkeypatch.setattr(Net, "save_config", boom)
    else:
        real_rename = os.rename

        def rename(src: Any, dst: Any) -> None:
            if str(dst) == str(real) and str(src).endswith(".tmp"):
                raise OSError("disk full")
            real_rename(src, dst)

        monkeypatch.setattr(serialization.os, "rename", rename)
    with pytest.raises(OSError, match="disk full"):
        Net(hidden=5).save_pretrained(tmp_path / "alias")
    assert listing(tmp_path) == before
    assert stat.S_ISLNK(os.lstat(tmp_path / "alias").st_mode)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("requires_check", "maybe", "requires_check='maybe': Input should be a valid boolean"),
        ("requires_check", [True], "requires_check=[True]"),
        ("gain", float("nan"), "gain=nan: NaN"),
        ("gain", "loud", "gain='loud'"),
    ],
)
def test_pipeline_config_values_are_validated_like_any_config(tmp_path: Path, key: str, value: Any, words: str) -> None:
    folder = make_pipe().save_pretrained(tmp_path / "p")
    index = json.loads((folder / "model_index.json").read_text())
    assert index[key] == {"requires_check": True, "gain": 1.0}[key]
    index[key] = value
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError) as info:
        DiffusionPipeline.from_pretrained(folder)
    assert str(folder / "model_index.json") in str(info.value) and words in str(info.value)
    with pytest.raises(ConfigError, match="invalid config for Pipe"):
        Pipe(Net(), Sched(), **{key: value})


def test_pipeline_config_values_from_json_keep_their_meaning(tmp_path: Path) -> None:
    folder = make_pipe().save_pretrained(tmp_path / "p")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(requires_check=False, gain=2)
    (folder / "model_index.json").write_text(json.dumps(index))
    loaded = DiffusionPipeline.from_pretrained(folder)
    assert loaded.config["requires_check"] is False and loaded.config["gain"] == 2.0
    assert isinstance(loaded.config["gain"], float)
