"""The docs say what the code does: every hook, option and environment variable is documented."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
from difflux import hookspecs
from difflux.options import LoadOptions

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


HOOKS = [
    (name, fn)
    for name, fn in vars(hookspecs).items()
    if name.startswith("difflux_") and inspect.isfunction(fn)
]


def test_there_are_hooks_to_check() -> None:
    assert {name for name, _ in HOOKS} >= {
        "difflux_register_pipelines",
        "difflux_register_components",
        "difflux_register_schedulers",
        "difflux_register_attention_backends",
        "difflux_resolve_pretrained",
        "difflux_load_component",
        "difflux_component_loaded",
    }


@pytest.mark.parametrize(("name", "fn"), HOOKS, ids=[n for n, _ in HOOKS])
def test_every_hookspec_is_documented_with_its_signature(name: str, fn: object) -> None:
    params = ", ".join(inspect.signature(fn).parameters)  # type: ignore[arg-type]
    heading = f"`{name}({params})`"
    guide = (DOCS / "plugins.md").read_text(encoding="utf-8")
    assert heading in guide, f"docs/plugins.md lacks the heading {heading}"


@pytest.mark.parametrize("option", sorted(f.name for f in dataclasses.fields(LoadOptions)))
def test_every_from_pretrained_option_is_documented(option: str) -> None:
    table = (DOCS / "from_pretrained.md").read_text(encoding="utf-8")
    assert re.search(rf"^\| `{option}` \|", table, re.MULTILINE), f"docs/from_pretrained.md lacks `{option}`"


def test_every_environment_variable_is_documented() -> None:
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "core" / "src").rglob("*.py"))
    variables = set(re.findall(r"\bDIFFLUX_[A-Z_]+\b", sources))
    assert "DIFFLUX_LOAD_PLUGINS" in variables
    documented = (DOCS / "environment.md").read_text(encoding="utf-8")
    missing = sorted(v for v in variables if f"`{v}`" not in documented)
    assert not missing, f"docs/environment.md lacks {missing}"


def test_docs_nav_lists_every_page() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    missing = [p for p in pages if p not in nav]
    assert not missing, f"mkdocs.yml nav lacks {missing}"


def _cli_flags() -> list[tuple[str, str]]:
    import argparse

    from difflux import cli

    parser = cli.build_parser()
    found = [("difflux", flag) for action in parser._actions for flag in action.option_strings]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += [(name, flag) for a in sub._actions for flag in a.option_strings]
    return sorted({(c, f) for c, f in found if f not in ("-h", "--help")})


@pytest.mark.parametrize(("command", "flag"), _cli_flags(), ids=[f"{c} {f}" for c, f in _cli_flags()])
def test_every_cli_flag_is_documented(command: str, flag: str) -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"docs/cli.md lacks {flag} ({command})"


def test_every_plugin_refusal_is_documented() -> None:
    """The errors a misbehaving plugin gets are listed in docs/plugins.md, with the fixture and --check."""
    guide = (DOCS / "plugins.md").read_text(encoding="utf-8")
    for needle in (
        "## When a plugin misbehaves",
        "PluginConflictError",
        "UnknownClassError",
        "AttentionBackendError",
        "tryfirst",
        "trylast",
        "difflux_registry",
        "difflux plugins --check",
        "AttentionBackendConformance",
        "difflux[testing]",
        "examples/plugin-template/",
    ):
        assert needle in guide, f"docs/plugins.md lacks {needle!r}"
