"""Registers the plugin for the test session when it is not installed (``pytest`` before ``pip install -e .``).

``difflux.testing``'s fixture ``difflux_registry`` (loaded by pytest through difflux's ``pytest11``
entry point) gives each test an isolated registry; ``hello_registry`` below builds one with the
installed plugins plus this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import entry_points

import difflux_hello.plugin
import pytest
from difflux.registry import Registry
from difflux.testing import IsolatedRegistry

#: True once `pip install -e .` has made the entry point `hello` visible to difflux.
INSTALLED = any(ep.value == "difflux_hello.plugin" for ep in entry_points(group="difflux"))


@pytest.fixture
def hello_registry(difflux_registry: IsolatedRegistry) -> Iterator[Registry]:
    """The installed plugins and this one, as a user's process would see them."""
    extra = [] if INSTALLED else [("hello", difflux_hello.plugin)]
    yield difflux_registry.use(*extra, installed=True)


@pytest.fixture(autouse=True)
def _with_this_plugin(hello_registry: Registry) -> None:
    """Every test sees the plugin registered (the kits load classes by their registered names)."""
