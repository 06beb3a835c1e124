"""Subcommands from plugins: the ``difflux_register_commands`` hook."""

from __future__ import annotations

import argparse
import io
from typing import Any, TextIO

import pytest
from difflux import cli, hookimpl
from difflux.testing import IsolatedRegistry


def _add_hello(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default="world")

    def run(args: argparse.Namespace, out: TextIO) -> int:
        if args.name == "":
            raise cli.UsageError("--name must not be empty")
        out.write(f"hello {args.name}\n")
        return 0

    parser.set_defaults(handler=run)


class Hello:
    @hookimpl
    def difflux_register_commands(self, register: Any) -> None:
        register("hello", _add_hello, help="say hello")


class Clashing:
    @hookimpl
    def difflux_register_commands(self, register: Any) -> None:
        register("generate", _add_hello, help="a second generate")
        register("broken", "no_such_module_for_difflux:add", help="cannot be imported")
        register("greet", _add_hello, help="still registered after the two bad ones")


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main(list(argv), out=out), out.getvalue()


def test_a_plugin_command_runs_with_its_arguments_and_exit_status(
    difflux_registry: IsolatedRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    difflux_registry.use(("hello", Hello()))
    assert _run("hello", "--name", "difflux") == (0, "hello difflux\n")
    assert "say hello" in cli.build_parser().format_help()
    report = cli.plugins_report()
    assert next(p for p in report["plugins"] if p["name"] == "hello")["commands"] == ["hello"]
    listing = io.StringIO()
    cli._print_plugins(report, listing)
    assert "    command            difflux hello\n" in listing.getvalue()
    code, _ = _run("hello", "--name", "")
    assert code == 2
    assert "difflux hello: error: --name must not be empty" in capsys.readouterr().err


def test_a_clashing_or_broken_plugin_command_is_skipped_with_one_line(
    difflux_registry: IsolatedRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    difflux_registry.use(("clashing", Clashing()))
    parser = cli.build_parser()
    err = capsys.readouterr().err
    assert "plugin 'clashing' registers the command 'generate', which exists; skipped" in err
    assert "plugin 'clashing' command 'broken' skipped: ModuleNotFoundError" in err
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "broken" not in sub.choices
    assert "broken" not in parser.format_help()
    assert sub.choices["generate"].get_default("handler").__name__ == "_run_generate"  # core's stays
    assert _run("greet") == (0, "hello world\n")
