"""Every error difflux raises on purpose. Each message says what, where, and what to do."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConfigRangeError",
    "DiffluxError",
    "LoadError",
    "PluginConflictError",
    "PluginError",
    "RemoteCodeError",
    "UnknownClassError",
    "add_context",
]


def add_context(exc: BaseException, where: str) -> None:
    """Prefix ``exc``'s message with ``where`` (a file, a component), in place so its type is kept,
    unless the message already starts with it or is not a single string."""
    if len(exc.args) == 1 and isinstance(exc.args[0], str) and not exc.args[0].startswith(where):
        exc.args = (f"{where}: {exc.args[0]}",)


class DiffluxError(Exception):
    """Base class of difflux's own errors."""


class ConfigError(DiffluxError, ValueError):
    """A config file or config value is invalid (names the file, class and key)."""


class ConfigRangeError(ConfigError):
    """A config value is out of the range its class declares, or NaN (never valid in any class)."""


class PluginError(DiffluxError):
    """A plugin misbehaved while it was loaded or while it registered things."""


class PluginConflictError(PluginError):
    """Two plugins registered the same name (the message names both)."""


class UnknownClassError(DiffluxError, LookupError):
    """No installed plugin provides a class that a checkpoint names."""


class LoadError(DiffluxError, OSError):
    """Weights or folders could not be read (names the file and the tensor key)."""


class RemoteCodeError(LoadError, PermissionError):
    """Code that does not come from an installed distribution was refused (a custom pipeline or
    component without ``trust_remote_code=True``, or any of them while ``DIFFLUX_DISABLE_REMOTE_CODE``
    is set)."""
