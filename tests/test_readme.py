"""The README starts with the two commands, and CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_section = text.split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", first_section, re.DOTALL)]


def test_readme_starts_with_exactly_two_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands), "each command is one line"
    assert all("torch==2.13.0" in c for c in commands), "torch is pinned for the CPU machines"


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines()


def test_requirements_install_every_distribution() -> None:
    folders = {"core", *(f"plugins/{p.name}" for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())}
    if (ROOT / "hub" / "pyproject.toml").exists():
        folders.add("hub")
    main = (ROOT / "requirements.txt").read_text(encoding="utf-8").split()
    tests = (ROOT / "requirements-test.txt").read_text(encoding="utf-8").split()
    assert {f"./{f}" for f in folders} <= set(main), "requirements.txt misses a distribution"
    assert {f"./{f}" for f in folders} <= set(tests), "requirements-test.txt misses a distribution"
