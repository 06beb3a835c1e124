"""The plugin template (examples/plugin-template) passes its own tests, run as an author runs them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1] / "examples" / "plugin-template"


def test_the_template_declares_an_entry_point_to_its_plugin_module() -> None:
    project = tomllib.loads((TEMPLATE / "pyproject.toml").read_text())["project"]
    (target,) = project["entry-points"]["difflux"].values()
    assert (TEMPLATE / "src" / (target.replace(".", "/") + ".py")).is_file()
    assert any(dep.startswith("difflux[testing]") for dep in project["optional-dependencies"]["test"])


def test_the_templates_own_tests_pass_in_its_folder() -> None:
    """`pytest` inside the copied folder, before `pip install -e .`: every kit runs and passes, none skipped."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q"],
        cwd=TEMPLATE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))  # type: ignore[union-attr]
    assert passed >= 60, summary
    assert not re.search(r"failed|error|skipped", summary), summary
