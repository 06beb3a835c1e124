"""The plugin registry: loading entry points, registering, clashes, laziness, env vars, errors.

Throwaway plugins are objects registered with ``reset_registry(extra_plugins=...)``; entry
points are real: tiny ``*.dist-info`` folders written into a temporary ``sys.path`` entry, which
``importlib.metadata`` discovers like any installed distribution.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from difflux import hookimpl
from difflux.errors import LoadError, PluginConflictError, PluginError, UnknownClassError
from difflux.options import LoadOptions
from difflux.registry import Registry, get_registry, reset_registry

ENV_VARS = ("DIFFLUX_LOAD_PLUGINS", "DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "DIFFLUX_TRACE_PLUGINS")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A clean plugin environment; the registry is dropped afterwards so later tests rebuild it."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    try:
        yield monkeypatch
    finally:
        reset_registry()


@pytest.fixture
def isolated(env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No installed entry point loads: only core's plugin and the test's throwaway ones."""
    env.setenv("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "1")
    return env


class Site:
    """A temporary ``sys.path`` entry holding fake distributions and plugin modules."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.modules: list[str] = []
        monkeypatch.syspath_prepend(str(root))

    def module(self, name: str, source: str) -> None:
        (self.root / f"{name}.py").write_text(textwrap.dedent(source))
        self.modules.append(name)

    def distribution(self, dist: str, version: str, entry_points: dict[str, str]) -> None:
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[difflux]\n{lines}")


@pytest.fixture
def site(tmp_path: Path, env: pytest.MonkeyPatch) -> Iterator[Site]:
    s = Site(tmp_path, env)
    try:
        yield s
    finally:
        for name in s.modules:
            sys.modules.pop(name, None)


PIPELINE_PLUGIN = """
from difflux import hookimpl

class {cls}:
    pass

@hookimpl
def difflux_register_pipelines(register):
    register({cls}, aliases=["{cls}Alias"])
"""


# -- registration ------------------------------------------------------------------------------


class Everything:
    """Registers one of each kind of thing."""

    class MyPipeline:
        pass

    class MyModel:
        pass

    class MyScheduler:
        pass

    @hookimpl
    def difflux_register_pipelines(self, register: Any) -> None:
        register(self.MyPipeline, aliases=["my-pipe"])

    @hookimpl
    def difflux_register_components(self, register: Any) -> None:
        register(self.MyModel)
        register(self.MyModel, name="MyTokenizer", library="transformers")

    @hookimpl
    def difflux_register_schedulers(self, register: Any) -> None:
        register(self.MyScheduler, aliases={"My Sampler Karras": {"use_karras_sigmas": True}, "my sampler": {}})


def test_throwaway_plugin_registers_every_kind(isolated: pytest.MonkeyPatch) -> None:
    plugin = Everything()
    registry = reset_registry(extra_plugins=[("everything", plugin)])
    assert registry is get_registry()
    assert registry.pipeline_class("MyPipeline") is Everything.MyPipeline
    assert registry.pipeline_class("my-pipe") is Everything.MyPipeline
    assert registry.component_class("diffusers", "MyModel") is Everything.MyModel
    assert registry.component_class("transformers", "MyTokenizer") is Everything.MyModel
    assert registry.component_class("transformers", "MyModel") is None
    # Schedulers are components too, as model_index.json names them.
    assert registry.component_class("diffusers", "MyScheduler") is Everything.MyScheduler
    assert registry.scheduler_class("MyScheduler") is Everything.MyScheduler
    assert registry.owner(Everything.MyModel) is registry.plugins["everything"]
    assert sorted(registry.plugins["everything"].registered) == sorted(
        [
            ("pipeline", "MyPipeline"),
            ("pipeline", "my-pipe"),
            ("component", "diffusers.MyModel"),
            ("component", "transformers.MyTokenizer"),
            ("scheduler", "MyScheduler"),
            ("scheduler alias", "My Sampler Karras -> MyScheduler"),
            ("scheduler alias", "my sampler -> MyScheduler"),
        ]
    )
    assert set(registry.plugins) == {"difflux", "everything"}


def test_scheduler_aliases_resolve_case_insensitively(isolated: pytest.MonkeyPatch) -> None:
    registry = reset_registry(extra_plugins=[("everything", Everything())])
    assert registry is not None
    assert registry.resolve_scheduler("MyScheduler") == (Everything.MyScheduler, {})
    cls, overrides = registry.resolve_scheduler("my sampler KARRAS")
    assert (cls, overrides) == (Everything.MyScheduler, {"use_karras_sigmas": True})
    overrides["use_karras_sigmas"] = False  # a copy: the registered alias is unchanged
    assert registry.resolve_scheduler("My Sampler Karras")[1] == {"use_karras_sigmas": True}
    with pytest.raises(UnknownClassError, match=r"scheduler diffusers\.my sampler turbo"):
        registry.resolve_scheduler("my sampler turbo")


@pytest.mark.parametrize("kind", ["pipeline", "component", "scheduler", "scheduler alias", "attention backend"])
def test_name_clash_between_plugins_names_both(isolated: pytest.MonkeyPatch, kind: str) -> None:
    class Thing:
        pass

    class Clasher:
        @hookimpl
        def difflux_register_pipelines(self, register: Any) -> None:
            if kind == "pipeline":
                register(Thing)

        @hookimpl
        def difflux_register_components(self, register: Any) -> None:
            if kind == "component":
                register(Thing)

        @hookimpl
        def difflux_register_schedulers(self, register: Any) -> None:
            if kind == "scheduler":
                register(Thing)
            if kind == "scheduler alias":
                register(Thing, name=f"Thing{id(self)}", aliases={"Fast": {}})

        @hookimpl
        def difflux_register_attention_backends(self, register: Any) -> None:
            if kind == "attention backend":
                register("Thing", Thing)

    with pytest.raises(PluginConflictError) as info:
        reset_registry(extra_plugins=[("first-plugin", Clasher()), ("second-plugin", Clasher())])
    message = str(info.value)
    assert kind in message
    assert "'first-plugin'" in message and "'second-plugin'" in message


def test_same_plugin_may_register_a_name_twice(isolated: pytest.MonkeyPatch) -> None:
    class Twice:
        @hookimpl
        def difflux_register_pipelines(self, register: Any) -> None:
            register("json:JSONDecoder", name="P")
            register("json:JSONEncoder", name="P")

    registry = reset_registry(extra_plugins=[("twice", Twice())])
    assert registry is not None
    import json

    assert registry.pipeline_class("P") is json.JSONEncoder


def test_lazy_references_are_not_imported_until_used(site: Site, isolated: pytest.MonkeyPatch) -> None:
    site.module("difflux_lazy_target_mod", "class LazyPipeline:\n    pass\n")

    class Lazy:
        @hookimpl
        def difflux_register_pipelines(self, register: Any) -> None:
            register("difflux_lazy_target_mod:LazyPipeline")
            register("difflux_missing_target_mod:Gone")

    registry = reset_registry(extra_plugins=[("lazy", Lazy())])
    assert registry is not None
    assert "difflux_lazy_target_mod" not in sys.modules
    assert set(registry.pipelines) == {"LazyPipeline", "Gone"}  # names come from the reference
    cls = registry.pipeline_class("LazyPipeline")
    assert "difflux_lazy_target_mod" in sys.modules
    assert cls is sys.modules["difflux_lazy_target_mod"].LazyPipeline  # type: ignore[attr-defined]
    with pytest.raises(PluginError, match=r"plugin 'lazy' registered pipeline 'Gone' as 'difflux_missing_target_mod"):
        registry.pipeline_class("Gone")


def test_malformed_lazy_reference_is_a_plugin_error(isolated: pytest.MonkeyPatch) -> None:
    class Bad:
        @hookimpl
        def difflux_register_components(self, register: Any) -> None:
            register("no_colon_here")

    with pytest.raises(PluginError, match=r"'no_colon_here' must look like 'package\.module:ClassName'"):
        reset_registry(extra_plugins=[("bad", Bad())])


def test_error_inside_a_registration_hook_names_plugin_and_hook(isolated: pytest.MonkeyPatch) -> None:
    class Raises:
        @hookimpl
        def difflux_register_schedulers(self, register: Any) -> None:
            raise RuntimeError("boom")

    expected = r"plugin 'raiser' failed in difflux_register_schedulers: RuntimeError\('boom'\)"
    with pytest.raises(PluginError, match=expected):
        reset_registry(extra_plugins=[("raiser", Raises())])


def test_hook_implementation_may_take_fewer_arguments(isolated: pytest.MonkeyPatch) -> None:
    called: list[str] = []

    class NoArgs:
        @hookimpl
        def difflux_register_pipelines(self) -> None:
            called.append("yes")

    reset_registry(extra_plugins=[("no-args", NoArgs())])
    assert called == ["yes"]


def test_misspelled_hook_is_caught(isolated: pytest.MonkeyPatch) -> None:
    class Typo:
        @hookimpl
        def difflux_register_pipeline(self, register: Any) -> None:  # missing "s"
            pass

    with pytest.raises(pluggy.PluginValidationError, match="difflux_register_pipeline"):
        reset_registry(extra_plugins=[("typo", Typo())])


# -- entry points ------------------------------------------------------------------------------


def test_entry_point_plugins_load_with_distribution_and_version(site: Site, env: pytest.MonkeyPatch) -> None:
    site.module("difflux_fake_a", PIPELINE_PLUGIN.format(cls="FakeA"))
    site.distribution("difflux-fake-a", "1.2.3", {"fake-a": "difflux_fake_a"})
    registry = reset_registry(extra_plugins=[])
    assert registry is not None
    info = registry.plugins["fake-a"]
    assert (info.distribution, info.version, info.module) == ("difflux-fake-a", "1.2.3", "difflux_fake_a")
    assert registry.pipeline_class("FakeAAlias").__name__ == "FakeA"


def test_plugin_that_fails_to_import_is_skipped_with_one_log_line(
    site: Site, env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    site.module("difflux_fake_ok", PIPELINE_PLUGIN.format(cls="FakeOk"))
    site.distribution("difflux-fake-broken", "0.0.1", {"fake-broken": "difflux_no_such_plugin_module.plugin"})
    site.distribution("difflux-fake-ok", "0.0.2", {"fake-ok": "difflux_fake_ok"})
    with caplog.at_level(logging.DEBUG, logger="difflux"):
        registry = reset_registry(extra_plugins=[])
    assert registry is not None
    lines = [r.getMessage() for r in caplog.records if "fake-broken" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "\n" not in lines[0]
    assert "difflux-fake-broken" in lines[0] and "difflux_no_such_plugin_module" in lines[0]
    assert [r.levelno for r in caplog.records if "fake-broken" in r.getMessage()] == [logging.WARNING]
    assert "fake-broken" not in registry.plugins
    assert registry.skipped["fake-broken"].startswith("failed to import")
    assert "fake-ok" in registry.plugins  # the others still load


IMPORT_FAILURES = {
    "ImportError": "from os import no_such_name_for_tests\n",
    "ModuleNotFoundError": "import difflux_no_such_dependency_for_tests\n",
    "RuntimeError": "raise RuntimeError('plugin bug\\nsecond line')\n",
    "SyntaxError": "def broken(:\n    pass\n",
    "AttributeError": "import os\nos.no_such_attribute_for_tests\n",
    "ZeroDivisionError": "1 / 0\n",
    "NameError": "undefined_name_for_tests\n",
}


@pytest.mark.parametrize("kind", sorted(IMPORT_FAILURES))
def test_any_exception_at_plugin_import_isolates_that_plugin(
    site: Site, env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    module = f"difflux_fake_crash_{kind.lower()}"
    site.module(module, IMPORT_FAILURES[kind])
    site.module("difflux_fake_fine", PIPELINE_PLUGIN.format(cls="Fine"))
    site.distribution("difflux-fake-crash", "0.1", {"fake-crash": module})
    site.distribution("difflux-fake-fine", "0.2", {"fake-fine": "difflux_fake_fine"})
    with caplog.at_level(logging.DEBUG, logger="difflux"):
        registry = reset_registry(extra_plugins=[])
    assert registry is not None
    lines = [r.getMessage() for r in caplog.records if "fake-crash" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "'fake-crash' (difflux-fake-crash 0.1)" in lines[0] and kind in lines[0] and module in lines[0]
    assert "fake-crash" not in registry.plugins
    assert registry.skipped["fake-crash"].startswith(f"failed to import: {kind}")
    assert registry.pipeline_class("Fine").__name__ == "Fine"  # the others still load


def test_two_distributions_with_one_entry_point_name_clash(site: Site, env: pytest.MonkeyPatch) -> None:
    site.module("difflux_fake_one", PIPELINE_PLUGIN.format(cls="One"))
    site.module("difflux_fake_two", PIPELINE_PLUGIN.format(cls="Two"))
    site.distribution("difflux-fake-one", "1.0", {"fake-dup": "difflux_fake_one"})
    site.distribution("difflux-fake-two", "1.0", {"fake-dup": "difflux_fake_two"})
    with pytest.raises(PluginConflictError) as info:
        reset_registry(extra_plugins=[])
    assert "'fake-dup'" in str(info.value)
    assert "difflux-fake-one" in str(info.value) and "difflux-fake-two" in str(info.value)


def test_load_plugins_allow_list(site: Site, env: pytest.MonkeyPatch) -> None:
    site.module("difflux_fake_x", PIPELINE_PLUGIN.format(cls="X"))
    site.module("difflux_fake_y", PIPELINE_PLUGIN.format(cls="Y"))
    site.distribution("difflux-fake-xy", "1.0", {"fake-x": "difflux_fake_x", "fake-y": "difflux_fake_y"})
    env.setenv("DIFFLUX_LOAD_PLUGINS", " fake-x , ")
    registry = reset_registry(extra_plugins=[])
    assert registry is not None
    assert set(registry.plugins) == {"difflux", "fake-x"}  # core's own plugin always loads
    assert "DIFFLUX_LOAD_PLUGINS" in registry.skipped["fake-y"]
    assert "difflux_fake_y" not in sys.modules  # a blocked plugin is not even imported
    with pytest.raises(UnknownClassError):
        registry.pipeline_class("Y")


@pytest.mark.parametrize(("value", "disabled"), [("1", True), ("true", True), ("0", False), ("", False)])
def test_disable_plugin_autoload(site: Site, env: pytest.MonkeyPatch, value: str, disabled: bool) -> None:
    site.module("difflux_fake_auto", PIPELINE_PLUGIN.format(cls="Auto"))
    site.distribution("difflux-fake-auto", "1.0", {"fake-auto": "difflux_fake_auto"})
    env.setenv("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", value)
    registry = reset_registry(extra_plugins=[])
    assert registry is not None
    assert ("fake-auto" in registry.plugins) is not disabled
    if disabled:
        assert set(registry.plugins) == {"difflux"}
        assert "fake-auto" in registry.skipped
        # ... unless the allow-list names it.
        env.setenv("DIFFLUX_LOAD_PLUGINS", "fake-auto")
        registry = reset_registry(extra_plugins=[])
        assert registry is not None
        assert set(registry.plugins) == {"difflux", "fake-auto"}


def test_trace_plugins_writes_to_stderr(isolated: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    isolated.setenv("DIFFLUX_TRACE_PLUGINS", "1")
    registry = reset_registry(extra_plugins=[("everything", Everything())])
    assert registry is not None
    registry.resolve_pretrained(".", LoadOptions())
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("difflux trace:")]
    assert "difflux trace: difflux_register_pipelines -> plugin 'everything'" in lines
    assert "difflux trace: difflux_register_attention_backends -> plugin 'difflux'" in lines
    assert any("difflux_resolve_pretrained" in line for line in lines)
    isolated.delenv("DIFFLUX_TRACE_PLUGINS")
    reset_registry(extra_plugins=[("everything", Everything())])
    assert "difflux trace" not in capsys.readouterr().err


# -- errors that say what to install --------------------------------------------------------


def _as_if_nothing_else_installed(registry: Registry) -> Registry:
    """Forget the installed plugins that autoload-off skipped, as in an environment with core only."""
    registry.skipped.clear()
    registry.skipped_distributions.clear()
    registry.excluded.clear()
    return registry


@pytest.mark.parametrize(
    ("kind", "library", "name", "dist"),
    [
        ("component", "diffusers", "UNet2DConditionModel", "difflux-models"),
        ("scheduler", "diffusers", "DDIMScheduler", "difflux-schedulers"),
        ("pipeline", "diffusers", "StableDiffusionXLPipeline", "difflux-stable-diffusion"),
        ("component", "transformers", "CLIPTextModel", "difflux-transformers"),
        ("component", "transformers", "AnythingElse", "difflux-transformers"),
    ],
)
def test_unknown_class_error_names_the_distribution(
    isolated: pytest.MonkeyPatch, kind: str, library: str, name: str, dist: str
) -> None:
    registry = _as_if_nothing_else_installed(get_registry())
    err = registry.unknown(kind, name, library=library, where="model_index.json")
    assert isinstance(err, LookupError)
    assert f"{kind} {library}.{name} (model_index.json)" in str(err)
    assert f"pip install {dist}" in str(err)


def test_lookups_of_unregistered_classes_raise_naming_the_distribution(isolated: pytest.MonkeyPatch) -> None:
    registry = _as_if_nothing_else_installed(get_registry())
    with pytest.raises(UnknownClassError, match="pip install difflux-stable-diffusion"):
        registry.pipeline_class("StableDiffusionPipeline")
    with pytest.raises(UnknownClassError, match="pip install difflux-schedulers"):
        registry.scheduler_class("EulerDiscreteScheduler")
    with pytest.raises(UnknownClassError, match="`difflux plugins` lists what is installed"):
        registry.pipeline_class("SomeoneElsesPipeline")


def test_resolve_pretrained(isolated: pytest.MonkeyPatch, tmp_path: Path) -> None:
    registry = get_registry()
    assert registry.resolve_pretrained(tmp_path, LoadOptions()) == tmp_path
    with pytest.raises(LoadError, match="pip install difflux-hub") as info:
        registry.resolve_pretrained(tmp_path / "missing", LoadOptions())
    assert str(tmp_path / "missing") in str(info.value)
    with pytest.raises(LoadError, match="difflux-hub"):
        registry.resolve_pretrained("someone/some-model", LoadOptions())


def test_resolve_pretrained_asks_plugins_before_the_local_path(isolated: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Hub:
        @hookimpl
        def difflux_resolve_pretrained(self, name_or_path: str) -> Path | None:
            return tmp_path if name_or_path == "someone/model" else None

    registry = reset_registry(extra_plugins=[("hub", Hub())])
    assert registry is not None
    assert registry.resolve_pretrained("someone/model", LoadOptions()) == tmp_path
    assert registry.resolve_pretrained(str(tmp_path), LoadOptions()) == tmp_path


# -- laziness --------------------------------------------------------------------------------


def test_registry_is_built_once_and_rebuilt_after_reset(isolated: pytest.MonkeyPatch) -> None:
    reset_registry()
    first = get_registry()
    assert isinstance(first, Registry)
    assert get_registry() is first
    assert reset_registry() is None
    assert get_registry() is not first


def test_building_the_registry_imports_no_torch() -> None:
    code = (
        "import sys, difflux\n"
        "r = difflux.get_registry()\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'accelerate', 'jax', 'numpy') if m in sys.modules)\n"
        "print(len(r.plugins), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    count, heavy = out.strip().split(" ", 1)
    assert int(count) >= 1
    assert heavy == "[]", f"building the registry imported {heavy}"
