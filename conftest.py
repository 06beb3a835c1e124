"""Workspace-wide pytest switches.

Tests marked ``slow`` (more than a few seconds each) are skipped by the README's test command and
run with ``--run-slow`` (or ``DIFFLUX_RUN_SLOW=1``), which ``nox -s tests-slow`` passes.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("DIFFLUX_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow or nox -s tests-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
