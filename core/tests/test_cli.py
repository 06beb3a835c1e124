"""The ``difflux`` command: ``plugins`` in-process and as the installed script."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest
from difflux import __version__, cli, hookimpl
from difflux.registry import reset_registry

SCRIPT = Path(sys.executable).with_name("difflux")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for var in ("DIFFLUX_LOAD_PLUGINS", "DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "DIFFLUX_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    reset_registry()
    try:
        yield monkeypatch
    finally:
        reset_registry()


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


class Showcase:
    class ShowPipeline:
        pass

    class ShowModel:
        pass

    class ShowScheduler:
        pass

    @hookimpl
    def difflux_register_pipelines(self, register: Any) -> None:
        register(self.ShowPipeline, aliases=["show"])

    @hookimpl
    def difflux_register_components(self, register: Any) -> None:
        register(self.ShowModel)
        register("somewhere:ShowTokenizer", library="transformers")

    @hookimpl
    def difflux_register_schedulers(self, register: Any) -> None:
        register(self.ShowScheduler, aliases={"Show Karras": {"use_karras_sigmas": True}, "Show": {}})

    @hookimpl
    def difflux_register_attention_backends(self, register: Any) -> None:
        register(
            "show-flash",
            "somewhere:flash",
            priority=7,
            devices=["cuda"],
            dtypes=["float16", "bfloat16"],
            supports_mask=False,
            max_head_dim=128,
        )
        register("show-missing", "somewhere:x", requires=["difflux_no_such_module_for_tests"])

    @hookimpl
    def difflux_component_loaded(self, name: str, component: Any) -> None:
        return None


def test_plugins_lists_sdpa_and_its_backend(env: pytest.MonkeyPatch) -> None:
    pytest.importorskip("difflux_attention_sdpa")
    code, text = _run("plugins")
    assert code == 0
    assert "attention-sdpa  (difflux-attention-sdpa 0.1.0, module difflux_attention_sdpa.plugin)" in text
    assert "attention backend  sdpa  (priority 100; any device; any dtype; requires torch)" in text
    assert "attention backend  reference  (priority -100; any device; any dtype)" in text
    assert text.rstrip().endswith("default attention backend: sdpa")


def test_plugins_json(env: pytest.MonkeyPatch) -> None:
    pytest.importorskip("difflux_attention_sdpa")
    code, text = _run("plugins", "--json")
    assert code == 0
    report = json.loads(text)
    by_name = {p["name"]: p for p in report["plugins"]}
    assert by_name["difflux"]["distribution"] == "difflux"
    assert by_name["difflux"]["version"] == __version__
    sdpa = by_name["attention-sdpa"]
    assert sdpa["distribution"] == "difflux-attention-sdpa"
    assert sdpa["attention_backends"][0]["name"] == "sdpa"  # first: the highest priority of the plugin
    assert sdpa["attention_backends"][0] == {
        "name": "sdpa",
        "priority": 100,
        "devices": None,
        "dtypes": None,
        "supports_mask": True,
        "supports_causal": True,
        "max_head_dim": None,
        "requires": ["torch"],
        "available": True,
        "unavailable": None,
    }
    assert report["default_attention_backend"] == "sdpa"
    assert report["skipped"] == []


def test_plugins_shows_everything_a_plugin_registers_and_what_was_skipped(env: pytest.MonkeyPatch) -> None:
    env.setenv("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = reset_registry(extra_plugins=[("showcase", Showcase())])
    assert registry is not None
    report = cli.plugins_report()
    show = next(p for p in report["plugins"] if p["name"] == "showcase")
    assert show["pipelines"] == ["ShowPipeline", "show"]
    assert show["components"] == ["diffusers.ShowModel", "transformers.ShowTokenizer"]
    assert show["schedulers"] == [{"name": "ShowScheduler", "aliases": ["Show", "Show Karras"]}]
    flash, missing = show["attention_backends"]
    assert (flash["name"], flash["devices"], flash["dtypes"]) == ("show-flash", ["cuda"], ["bfloat16", "float16"])
    assert (flash["supports_mask"], flash["max_head_dim"], flash["available"]) == (False, 128, True)
    assert missing["available"] is False and "difflux_no_such_module_for_tests" in missing["unavailable"]
    # Every installed entry point was skipped, each with the reason.
    assert {s["name"] for s in report["skipped"]} >= set(registry.skipped)
    assert all("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD" in s["reason"] for s in report["skipped"])
    assert report["default_attention_backend"] == "show-flash"  # highest-priority available one
    assert show["hooks"] == ["difflux_component_loaded"]  # behaviour hooks, not the register ones
    core = next(p for p in report["plugins"] if p["name"] == "difflux")
    assert core["hooks"] == ["difflux_resolve_pretrained"]

    code, text = _run("plugins")
    assert code == 0
    assert "    pipeline           show\n" in text
    assert "    component          transformers.ShowTokenizer\n" in text
    assert "    scheduler          ShowScheduler  aliases: Show, Show Karras\n" in text
    assert (
        "    attention backend  show-flash  (priority 7; devices cuda; dtypes bfloat16,float16; no mask; "
        "head dim <= 128)\n"
    ) in text
    assert "UNAVAILABLE: needs the module 'difflux_no_such_module_for_tests'" in text
    assert "    hook               difflux_component_loaded\n" in text
    if registry.skipped:
        assert "skipped plugins:\n" in text
        name = next(iter(registry.skipped))
        assert f"    {name}: not loaded: DIFFLUX_DISABLE_PLUGIN_AUTOLOAD is set" in text
    assert "difflux  (difflux " in text and "registers nothing" not in text.split("showcase")[0]


def test_plugins_reports_a_plugin_error_as_exit_status_1(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Broken:
        @hookimpl
        def difflux_register_pipelines(self, register: Any) -> None:
            register("not a reference")

    def failing_registry() -> Any:
        return reset_registry(extra_plugins=[("broken", Broken())])

    env.setattr(cli, "get_registry", failing_registry)
    assert _run("plugins")[0] == 1
    assert "difflux plugins: error: " in capsys.readouterr().err


def test_no_command_prints_help_and_version_works(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = _run()
    assert code == 2
    assert "plugins" in text and "usage: difflux" in text
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"difflux {__version__}"


def test_a_subcommand_is_one_function(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_echo(args: argparse.Namespace, out: TextIO) -> int:
        out.write(f"echo {args.word}\n")
        return 3

    def add_echo(sub: Any) -> None:
        p = sub.add_parser("echo")
        p.add_argument("word")
        p.set_defaults(handler=run_echo)

    monkeypatch.setattr(cli, "_COMMANDS", [*cli._COMMANDS, add_echo])
    assert _run("echo", "hi") == (3, "echo hi\n")
    assert _run("plugins", "--json")[0] == 0


@pytest.mark.skipif(not SCRIPT.exists(), reason="the difflux script is not installed next to this Python")
def test_installed_script(env: pytest.MonkeyPatch) -> None:
    pytest.importorskip("difflux_attention_sdpa")
    done = subprocess.run([str(SCRIPT), "plugins", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    backends = {b["name"]: p["name"] for p in report["plugins"] for b in p["attention_backends"]}
    assert backends["sdpa"] == "attention-sdpa"
    assert backends["reference"] == "difflux"
    text = subprocess.run([str(SCRIPT), "plugins"], capture_output=True, text=True, check=True).stdout
    assert "attention backend  sdpa" in text


def test_plugins_command_imports_no_torch() -> None:
    code = "import sys\nfrom difflux.cli import main\nmain(['plugins'])\nprint('torch' in sys.modules)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.rstrip().endswith("False")


# -- difflux plugins --check --------------------------------------------------------------------


def test_plugins_check_passes_on_the_installed_plugins(env: pytest.MonkeyPatch) -> None:
    code, text = _run("plugins", "--check")
    assert code == 0, text
    last = text.splitlines()[-1]
    assert last.startswith("ok: imported ") and "references, validated" in last
    assert "problem:" not in text
    imported = int(last.split("imported ")[1].split(" ")[0])
    assert imported >= 2  # at least the reference backend and one more, whatever is installed


class BrokenReferences:
    class Sched:
        def __init__(self, steps: int = 1) -> None:
            pass

        @classmethod
        def from_config(cls, config: Any) -> Any:
            return cls()

    @hookimpl
    def difflux_register_pipelines(self, register: Any) -> None:
        register("difflux_no_such_module_for_tests:GonePipeline")

    @hookimpl
    def difflux_register_schedulers(self, register: Any) -> None:
        register(self.Sched, name="Sched")

    @hookimpl
    def difflux_register_attention_backends(self, register: Any) -> None:
        register("gone-kernel", "difflux_no_such_module_for_tests:attn")


def test_plugins_check_reports_each_broken_reference_and_alias_with_exit_status_1(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = reset_registry(extra_plugins=[("broken", BrokenReferences())])
    assert registry is not None
    # an alias whose overrides the class does not take, as a lazily registered scheduler would carry it
    from difflux.registry import SchedulerAlias

    registry.scheduler_aliases["Sched Turbo"] = SchedulerAlias("Sched Turbo", "Sched", {"turbo": True}, "broken")
    code, text = _run("plugins", "--check")
    assert code == 1
    problems = [line for line in text.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 3, text
    assert any("'GonePipeline'" in p and "ModuleNotFoundError" in p for p in problems)
    assert any("'gone-kernel'" in p for p in problems)
    assert any("'Sched Turbo'" in p and "'turbo'" in p for p in problems)
    assert all("plugin 'broken'" in p for p in problems)
    assert text.splitlines()[-1].startswith("3 problem(s): imported ")
    code, text = _run("plugins", "--check", "--json")
    report = json.loads(text)
    assert code == 1 and len(report["problems"]) == 3 and report["aliases"] == 0
