"""Fixtures: a local Hub server (``HF_ENDPOINT``), a cache in ``tmp_path``, tiny difflux classes."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from difflux.registry import reset_registry

sys.path.insert(0, str(Path(__file__).parent))

from hubserver import LocalHub
from hubtiny import TOKEN, _TestPlugin


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Only core, the hub plugin (from its entry point) and the tiny test classes."""
    monkeypatch.setenv("DIFFLUX_LOAD_PLUGINS", "hub")
    monkeypatch.delenv("DIFFLUX_DISABLE_REMOTE_CODE", raising=False)
    reset_registry(extra_plugins=[("hubtest", _TestPlugin())])
    try:
        yield
    finally:
        reset_registry()


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A running local Hub; ``huggingface_hub`` points at it, with its cache in ``tmp_path``."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _http, disable_progress_bars, enable_progress_bars

    server = LocalHub(token=TOKEN).start()
    home = tmp_path / "hf_home"
    for name, value in {
        "HF_ENDPOINT": server.url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_XET": "1",
        "NO_PROXY": "127.0.0.1,localhost",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # huggingface_hub reads its environment once, at import: point the live constants here too.
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {"127.0.0.1"}))
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    _http.close_session()
    disable_progress_bars()
    try:
        yield server
    finally:
        enable_progress_bars()
        _http.close_session()
        server.stop()


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Call ``offline.on()`` to switch ``HF_HUB_OFFLINE`` on for the rest of the test."""
    from huggingface_hub import constants

    def on() -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    return types.SimpleNamespace(on=on)
