"""Plugin error boundaries: behaviour hooks that crash or return garbage, register() called with
garbage, scheduler alias clashes and bad overrides, plugins left out by DIFFLUX_LOAD_PLUGINS, and
``Registry.check``. Every failure names the plugin (and the hook or argument)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from difflux import _providers, hookimpl
from difflux.errors import LoadError, PluginConflictError, PluginError, UnknownClassError
from difflux.options import LoadOptions
from difflux.testing import IsolatedRegistry

# -- behaviour hooks --------------------------------------------------------------------------

CALLS: dict[str, dict[str, Any]] = {
    "difflux_resolve_pretrained": {"name_or_path": "org/model", "options": LoadOptions()},
    "difflux_load_component": {"library": "lib", "class_name": "Cls", "folder": Path("."), "options": LoadOptions()},
    "difflux_component_loaded": {"name": "unet", "component": object(), "options": LoadOptions()},
    "difflux_load_pipeline_class": {"folder": Path("."), "index": {}, "options": LoadOptions()},
    "difflux_push_to_hub": {"obj": object(), "repo_id": "org/x", "options": {}},
}

CRASHES: list[BaseException] = [
    RuntimeError("kaput"),
    KeyError("missing"),
    AttributeError("no attr"),
    TypeError("bad call"),
    ZeroDivisionError("x"),
]


def _plugin_with(hook: str, body: Any) -> object:
    def impl(**kwargs: Any) -> Any:
        return body()

    impl.__name__ = hook
    return type("P", (), {hook: staticmethod(hookimpl(impl))})()


def _raise(exc: BaseException) -> Any:
    def body() -> Any:
        raise exc

    return body


@pytest.mark.parametrize("hook", sorted(CALLS))
@pytest.mark.parametrize("exc", CRASHES, ids=lambda e: type(e).__name__)
def test_a_behaviour_hook_that_raises_is_a_plugin_error_naming_plugin_and_hook(
    difflux_registry: IsolatedRegistry, hook: str, exc: BaseException
) -> None:
    registry = difflux_registry.use(("crasher", _plugin_with(hook, _raise(exc))))
    with pytest.raises(PluginError) as info:
        getattr(registry.hook, hook)(**CALLS[hook])
    message = str(info.value)
    assert f"plugin 'crasher' failed in {hook}: {type(exc).__name__}" in message
    assert info.value.__cause__ is exc
    assert isinstance(info.value, type(exc))  # callers catching the built-in type still catch it


WRONG_RESULTS: dict[str, Any] = {
    "difflux_resolve_pretrained": 42,
    "difflux_load_pipeline_class": "NotAClass",
}


@pytest.mark.parametrize(("hook", "value"), [*sorted(WRONG_RESULTS.items()), ("difflux_load_pipeline_class", dict)])
def test_a_behaviour_hook_returning_the_wrong_type_is_a_plugin_error(
    difflux_registry: IsolatedRegistry, hook: str, value: Any
) -> None:
    registry = difflux_registry.use(("liar", _plugin_with(hook, lambda: value)))
    with pytest.raises(PluginError, match=rf"plugin 'liar' returned \w+ .* from {hook}; it must return"):
        getattr(registry.hook, hook)(**CALLS[hook])


@pytest.mark.parametrize(
    "exc",
    [LoadError("org/model: no such repo"), PermissionError("denied"), ConnectionError("offline")],
    ids=lambda e: type(e).__name__,
)
def test_difflux_and_environment_errors_pass_through_unchanged(
    difflux_registry: IsolatedRegistry, exc: Exception
) -> None:
    """A resolver that owns a name but cannot find it raises its own message: that reaches the user as is."""
    registry = difflux_registry.use(("hub-like", _plugin_with("difflux_resolve_pretrained", _raise(exc))))
    with pytest.raises(type(exc)) as info:
        registry.resolve_pretrained("org/model", LoadOptions())
    assert info.value is exc


def test_a_path_from_a_resolver_is_accepted(difflux_registry: IsolatedRegistry, tmp_path: Path) -> None:
    registry = difflux_registry.use(("ok", _plugin_with("difflux_resolve_pretrained", lambda: str(tmp_path))))
    assert registry.resolve_pretrained("org/model", LoadOptions()) == tmp_path


def test_a_crash_in_component_loaded_during_a_pipeline_load_names_the_plugin(
    difflux_registry: IsolatedRegistry, tmp_path: Path
) -> None:
    from difflux.schedulers import SchedulerMixin

    class Sched(SchedulerMixin):
        def __init__(self, beta: float = 0.5) -> None:
            pass

    Sched().save_pretrained(tmp_path)

    class Breaks:
        @hookimpl
        def difflux_register_schedulers(self, register: Any) -> None:
            register(Sched)

        @hookimpl
        def difflux_component_loaded(self, component: Any) -> Any:
            return component.no_such_attribute

    difflux_registry.use(("breaks", Breaks()))
    with pytest.raises(PluginError, match=r"plugin 'breaks' failed in difflux_component_loaded: AttributeError"):
        Sched.from_pretrained(tmp_path)


# -- register() with garbage ----------------------------------------------------------------------


def _noop(*args: Any) -> None:
    return None


GARBAGE: list[tuple[str, str, tuple[Any, ...], dict[str, Any], str]] = [
    ("pipelines", "int ref", (42,), {}, "with 42 .*pass the class or a lazy"),
    ("pipelines", "None ref", (None,), {}, "with None"),
    ("pipelines", "ref without colon", ("json.JSONDecoder",), {}, "'json.JSONDecoder' must look like"),
    ("pipelines", "ref with spaces", ("json: JSON Decoder",), {}, "must look like"),
    ("pipelines", "name not a string", ("json:JSONDecoder",), {"name": 3}, "name=3"),
    ("pipelines", "aliases as a string", ("json:JSONDecoder",), {"aliases": "abc"}, "aliases='abc'; pass a list"),
    ("pipelines", "alias None", ("json:JSONDecoder",), {"aliases": [None]}, "aliases with None"),
    ("components", "instance, not class", (object(),), {}, r"with <object object .*\(object\)"),
    ("components", "library None", ("json:JSONDecoder",), {"library": None}, "library=None"),
    ("schedulers", "aliases as a list", ("json:JSONDecoder",), {"aliases": ["x"]}, r"aliases=\['x'\]"),
    ("schedulers", "overrides not a dict", ("json:JSONDecoder",), {"aliases": {"x": 3}}, "overrides 3"),
    ("schedulers", "empty alias", ("json:JSONDecoder",), {"aliases": {" ": {}}}, "non-empty string"),
    ("schedulers", "override key not str", ("json:JSONDecoder",), {"aliases": {"x": {1: 2}}}, r"overrides \{1: 2\}"),
    ("attention_backends", "name int", (5, _noop), {}, "backend named 5"),
    ("attention_backends", "ref int", ("n", 42), {}, "with 42"),
    ("attention_backends", "priority str", ("n", _noop), {"priority": "high"}, "priority='high'"),
    ("attention_backends", "devices str", ("n", _noop), {"devices": "cuda"}, "devices='cuda'; pass a set"),
    ("attention_backends", "requires str", ("n", _noop), {"requires": "torch"}, "requires='torch'"),
    ("attention_backends", "head dim 0", ("n", _noop), {"max_head_dim": 0}, "max_head_dim=0"),
    ("attention_backends", "mask flag str", ("n", _noop), {"supports_mask": "no"}, "supports_mask='no'"),
    ("attention_backends", "unknown constraint", ("n", _noop), {"fast": True}, "unknown constraints fast"),
]


@pytest.mark.parametrize(("hook", "what", "args", "kwargs", "message"), GARBAGE, ids=[g[1] for g in GARBAGE])
def test_register_called_with_garbage_names_the_plugin(
    difflux_registry: IsolatedRegistry,
    hook: str,
    what: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    message: str,
) -> None:
    def impl(register: Any) -> None:
        register(*args, **kwargs)

    impl.__name__ = f"difflux_register_{hook}"
    plugin = type("G", (), {impl.__name__: staticmethod(hookimpl(impl))})()
    with pytest.raises(PluginError, match=message) as info:
        difflux_registry.use(("garbage-plugin", plugin))
    assert "'garbage-plugin'" in str(info.value)


# -- scheduler aliases ----------------------------------------------------------------------------


class Fast:
    def __init__(self, steps: int = 10, use_karras_sigmas: bool = False) -> None:
        pass


class Slow:
    def __init__(self, steps: int = 10) -> None:
        pass


def _schedulers(*calls: tuple[Any, dict[str, Any]]) -> object:
    class Plugin:
        @hookimpl
        def difflux_register_schedulers(self, register: Any) -> None:
            for ref, kwargs in calls:
                register(ref, **kwargs)

    return Plugin()


CLASHES = [
    ("alias = another plugin's class", [(Fast, {})], [(Slow, {"aliases": {"Fast": {}}})]),
    ("alias = another plugin's class, other case", [(Fast, {})], [(Slow, {"aliases": {"FAST": {}}})]),
    ("class = another plugin's alias", [(Slow, {"aliases": {"Fast": {}}})], [(Fast, {})]),
    (
        "alias = another plugin's alias, other case",
        [(Fast, {"aliases": {"Quick": {}}})],
        [(Slow, {"aliases": {"quick": {}}})],
    ),
]


@pytest.mark.parametrize(("what", "first", "second"), CLASHES, ids=[c[0] for c in CLASHES])
def test_scheduler_alias_clash_names_both_plugins(
    difflux_registry: IsolatedRegistry, what: str, first: list[Any], second: list[Any]
) -> None:
    with pytest.raises(PluginConflictError) as info:
        difflux_registry.use(("one", _schedulers(*first)), ("two", _schedulers(*second)))
    assert "'one'" in str(info.value) and "'two'" in str(info.value)


def test_an_alias_with_an_unknown_config_key_is_refused_at_registration(difflux_registry: IsolatedRegistry) -> None:
    plugin = _schedulers((Slow, {"aliases": {"Slow Karras": {"use_karras_sigmas": True}}}))
    with pytest.raises(PluginError, match=r"'sloppy'.*'Slow Karras' -> Slow.*'use_karras_sigmas'.*it takes: steps"):
        difflux_registry.use(("sloppy", plugin))
    registry = difflux_registry.use(
        ("fine", _schedulers((Fast, {"aliases": {"Fast Karras": {"use_karras_sigmas": True}}})))
    )
    assert registry.resolve_scheduler("fast karras") == (Fast, {"use_karras_sigmas": True})


def test_a_lazy_scheduler_alias_is_checked_when_its_class_is_first_imported(
    difflux_registry: IsolatedRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "difflux_lazy_sched_for_tests.py").write_text(
        "class Lazy:\n    def __init__(self, steps: int = 1) -> None:\n        pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = _schedulers(("difflux_lazy_sched_for_tests:Lazy", {"aliases": {"Lazy Turbo": {"turbo": True}}}))
    registry = difflux_registry.use(("lazy", plugin))  # nothing imported yet
    report = registry.check()
    assert any("'Lazy Turbo'" in p and "'turbo'" in p and "'lazy'" in p for p in report.problems), report.problems
    with pytest.raises(PluginError, match="'turbo'"):
        registry.resolve_scheduler("Lazy Turbo")


# -- plugins that are installed but not loaded --------------------------------------------------


def _fake_site(root: Path, monkeypatch: pytest.MonkeyPatch, module_source: str) -> None:
    module = f"difflux_fake_provider_{root.name.replace('-', '_')}"  # one per test: no stale sys.modules entry
    (root / f"{module}.py").write_text(textwrap.dedent(module_source))
    info = root / "difflux_fake_provider-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: difflux-fake-provider\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[difflux]\nfake-provider = {module}\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setitem(_providers.PROVIDERS, "FakeProvidedPipeline", "difflux-fake-provider")


PROVIDER = """
from difflux import hookimpl

class FakeProvidedPipeline:
    pass

@hookimpl
def difflux_register_pipelines(register):
    register(FakeProvidedPipeline)
"""


@pytest.mark.parametrize("how", ["allow-list", "autoload off"])
def test_a_class_whose_plugin_is_excluded_says_so_not_pip_install(
    difflux_registry: IsolatedRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    _fake_site(tmp_path, monkeypatch, PROVIDER)
    if how == "allow-list":
        monkeypatch.setenv("DIFFLUX_LOAD_PLUGINS", "something-else")
    registry = difflux_registry.use()
    with pytest.raises(UnknownClassError) as info:
        registry.pipeline_class("FakeProvidedPipeline")
    message = str(info.value)
    assert "pip install" not in message
    assert "'difflux-fake-provider', which is installed" in message
    assert "plugin 'fake-provider' is excluded" in message and "DIFFLUX_LOAD_PLUGINS" in message
    # a third-party class that a folder's _difflux_plugins record names (not in core's table): the same
    recorded = str(registry.unknown("pipeline", "NotInTheTable", distribution="difflux-fake-provider"))
    assert "pip install" not in recorded and "plugin 'fake-provider' is excluded" in recorded
    monkeypatch.setenv("DIFFLUX_LOAD_PLUGINS", "fake-provider")
    assert difflux_registry.use().pipeline_class("FakeProvidedPipeline").__name__ == "FakeProvidedPipeline"


def test_a_class_whose_plugin_failed_to_import_says_so(
    difflux_registry: IsolatedRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_site(tmp_path, monkeypatch, "raise RuntimeError('half-installed')\n")
    registry = difflux_registry.use(installed=True)
    with pytest.raises(
        UnknownClassError, match=r"plugin 'fake-provider' failed to import: RuntimeError: half-installed"
    ):
        registry.pipeline_class("FakeProvidedPipeline")


# -- Registry.check ---------------------------------------------------------------------------------


def test_check_imports_every_reference_and_validates_every_alias(difflux_registry: IsolatedRegistry) -> None:
    class Broken:
        @hookimpl
        def difflux_register_pipelines(self, register: Any) -> None:
            register("json:JSONDecoder", name="NotAPipeline")
            register("difflux_no_such_module_for_tests:Pipe")

        @hookimpl
        def difflux_register_schedulers(self, register: Any) -> None:
            register("json:no_such_attribute_for_tests", name="Gone")
            register(Slow, aliases={"Slow Fast": {"steps": 3}})

        @hookimpl
        def difflux_register_attention_backends(self, register: Any) -> None:
            register("broken-kernel", "difflux_no_such_module_for_tests:attn")
            register("needs-cuda-lib", "difflux_no_such_module_for_tests:attn", requires=["difflux_no_such_cuda_lib"])

    registry = difflux_registry.use(("broken", Broken()))
    report = registry.check()
    text = "\n".join(report.problems)
    assert len(report.problems) == 5, text
    assert "'Slow'" in text and "which has no from_config" in text
    assert "'NotAPipeline'" in text and "not a DiffusionPipeline subclass" in text
    assert "difflux_no_such_module_for_tests:Pipe" in text and "ModuleNotFoundError" in text
    assert "'Gone'" in text and "AttributeError" in text
    assert "'broken-kernel'" in text
    assert all("'broken'" in p for p in report.problems)
    assert report.aliases == 1
    assert report.unavailable == [
        "attention backend 'needs-cuda-lib' (plugin 'broken'): needs the module 'difflux_no_such_cuda_lib', "
        "which is not installed"
    ]
    clean = difflux_registry.use()
    assert clean.check().problems == []
