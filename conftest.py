"""Workspace-wide pytest switches.

Tests marked ``slow`` (more than a few seconds each) are skipped by the README's test command and
run with ``--run-slow`` (or ``DIFFLUX_RUN_SLOW=1``), which ``nox -s tests-slow`` passes.

Under ``pytest -n N`` each worker runs torch on one thread (``OMP_NUM_THREADS=1`` unless set):
N workers with torch's default thread pool each oversubscribe the cores, and the tiny models
the tests use run many times slower that way.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("DIFFLUX_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow or nox -s tests-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
