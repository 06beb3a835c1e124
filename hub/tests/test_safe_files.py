"""The hub's reads of downloaded JSON go through the core's one safe reader."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from difflux import DiffusionPipeline
from difflux.errors import ConfigError
from difflux_hub._download import _read_index
from hubserver import LocalHub
from test_download import REPO, publish

#: kind: (make the bad file, words the error must contain)
BAD: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (lambda p: os.mkfifo(p), "FIFO"),
    "link-to-dev-zero": (lambda p: p.symlink_to("/dev/zero"), "character device"),
    "folder": (lambda p: p.mkdir(), "a folder"),
    "not-utf8": (lambda p: p.write_bytes(b'{"_class_name": "\xff"}'), "not UTF-8"),
    "deep": (lambda p: p.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"), "nested"),
    "not-json": (lambda p: p.write_text("{"), "not valid JSON"),
    "not-an-object": (lambda p: p.write_text("[]"), "expected a JSON object"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_the_first_look_at_model_index_refuses_bad_files(tmp_path: Path, kind: str) -> None:
    make, words = BAD[kind]
    make(tmp_path / "model_index.json")
    with pytest.raises(ConfigError) as info:
        _read_index(tmp_path)
    assert str(tmp_path / "model_index.json") in str(info.value) and words in str(info.value)


def test_a_downloaded_model_index_that_is_not_utf8_names_the_cached_file(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    hub.commit(REPO, {"model_index.json": b'{"_class_name": "TinyPipeline", "x": "\xff"}'})
    with pytest.raises(ConfigError, match=r"model_index\.json: the model_index\.json file is not UTF-8 text"):
        DiffusionPipeline.from_pretrained(REPO)
