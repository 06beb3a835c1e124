"""pytest fixtures for plugin test suites: an isolated plugin registry.

pytest loads this module by itself wherever ``difflux`` is installed (the ``pytest11`` entry
point ``difflux``); without that, name it in a ``conftest.py``::

    pytest_plugins = ["difflux.testing.fixtures"]

::

    def test_my_scheduler_registers(difflux_registry):
        registry = difflux_registry.use(my_plugin_module)
        assert registry.scheduler_class("MyScheduler") is MyScheduler

Importing this module stays cheap (no torch), since pytest imports it in every session.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ..registry import Registry, get_registry, reset_registry

__all__ = ["ENV_VARS", "IsolatedRegistry", "difflux_registry"]

#: Environment variables that change which plugins load; the fixture clears them.
ENV_VARS = (
    "DIFFLUX_LOAD_PLUGINS",
    "DIFFLUX_DISABLE_PLUGIN_AUTOLOAD",
    "DIFFLUX_TRACE_PLUGINS",
    "DIFFLUX_ATTENTION_BACKEND",
)


def _named(plugin: Any) -> tuple[str, Any]:
    if isinstance(plugin, tuple) and len(plugin) == 2 and isinstance(plugin[0], str):
        return plugin[0], plugin[1]
    name = getattr(plugin, "__name__", None) or type(plugin).__name__
    return str(name), plugin


class IsolatedRegistry:
    """The process registry, rebuilt for one test from core's plugin and the plugins the test names.

    Installed plugins do not load unless :meth:`use` is called with ``installed=True``. When the
    test ends, the registry is dropped (the next use rebuilds it from the real environment) and a
    process-wide attention backend set during the test is cleared.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        for var in ENV_VARS:
            monkeypatch.delenv(var, raising=False)
        self.use()

    def use(self, *plugins: Any, installed: bool = False) -> Registry:
        """Rebuild the registry with ``plugins`` (modules, objects, or ``(name, plugin)`` pairs).

        :param installed: also load the installed entry-point plugins (as a user's process would).
        :return: the new registry, which :func:`difflux.get_registry` now returns.
        :raises difflux.PluginError: a plugin's registration hooks misbehave (as in a real process).
        """
        if installed:
            self._monkeypatch.delenv("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", raising=False)
        else:
            self._monkeypatch.setenv("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD", "1")
        registry = reset_registry(extra_plugins=[_named(p) for p in plugins])
        assert registry is not None
        return registry

    @property
    def registry(self) -> Registry:
        """The registry the test is using now."""
        return get_registry()

    def close(self) -> None:
        attention = sys.modules.get("difflux.attention")
        if attention is not None:
            attention.set_attention_backend(None)
        reset_registry()  # after the line above, which rebuilds it


@pytest.fixture
def difflux_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[IsolatedRegistry]:
    """An isolated plugin registry: core's own plugin only, until the test calls ``.use(...)``."""
    isolated = IsolatedRegistry(monkeypatch)
    try:
        yield isolated
    finally:
        isolated.close()
