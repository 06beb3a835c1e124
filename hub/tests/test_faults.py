"""Faults on the wire and in repos: dropped connections, 401 / 404, missing revisions and files, bad names."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from difflux import DiffusionPipeline
from difflux.errors import ConfigError, LoadError
from hubserver import LocalHub
from hubtiny import TinyModel, TinyPipeline, tiny_pipeline
from test_download import REPO, publish, same_weights

WEIGHTS = "model/diffusion_pytorch_model.safetensors"


@pytest.fixture
def no_retry_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub waits 1 s before resuming a dropped download; tests need not."""
    from huggingface_hub import file_download

    monkeypatch.setattr(file_download, "time", types.SimpleNamespace(sleep=lambda seconds: None))


def blobs(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in cache.rglob("blobs/*") if p.is_file()}


def test_dropped_connection_is_resumed_and_the_cache_is_whole(
    hub: LocalHub, tmp_path: Path, no_retry_pause: None
) -> None:
    original = publish(hub, tmp_path)
    size = len(hub.files(REPO)[WEIGHTS])
    hub.drop_after[WEIGHTS] = [size // 2, 1]  # cut the first GET half-way through
    pipe = DiffusionPipeline.from_pretrained(REPO)
    assert same_weights(pipe.model, original.model)
    ranged = [p for m, p in hub.requests if m == "GET" and p.endswith(WEIGHTS)]
    assert len(ranged) == 2  # the retry resumed the same file
    assert hub.files(REPO)[WEIGHTS] in blobs(tmp_path / "hf_home" / "hub").values()


def test_download_that_keeps_failing_leaves_no_corrupt_file_and_a_retry_succeeds(
    hub: LocalHub, tmp_path: Path, no_retry_pause: None
) -> None:
    original = publish(hub, tmp_path)
    hub.drop_after[WEIGHTS] = [0, 100]  # every GET of the weights is cut before any byte
    with pytest.raises(LoadError, match=r"org/tiny-pipe \(revision 'main'\): download failed"):
        DiffusionPipeline.from_pretrained(REPO)
    cache = tmp_path / "hf_home" / "hub"
    snapshot = next(cache.rglob("snapshots/*"))
    assert not (snapshot / WEIGHTS).exists()
    assert not list(cache.rglob("*.incomplete"))
    assert hub.files(REPO)[WEIGHTS] not in blobs(cache).values()
    hub.drop_after.clear()
    pipe = DiffusionPipeline.from_pretrained(REPO)
    assert same_weights(pipe.model, original.model)


def test_missing_repo_and_bad_token(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    with pytest.raises(LoadError, match=r"org/nope: no such repo on the Hub"):
        DiffusionPipeline.from_pretrained("org/nope")
    with pytest.raises(LoadError, match=r"org/tiny-pipe: not authorized \(HTTP 401\); check the token"):
        DiffusionPipeline.from_pretrained(REPO, token="hf_wrong")


def test_missing_revision(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    with pytest.raises(LoadError, match=r"org/tiny-pipe: revision 'v9' does not exist"):
        DiffusionPipeline.from_pretrained(REPO, revision="v9")


def test_server_error_names_the_repo(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    hub.fail_status[WEIGHTS] = 403  # (5xx would be retried with back-off)
    with pytest.raises(LoadError, match=r"org/tiny-pipe \(revision 'main'\)"):
        TinyModel.from_pretrained(REPO, subfolder="model")


def test_repo_without_model_index(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    hub.commit(REPO, delete=("model_index.json",))
    with pytest.raises(LoadError, match=r"no model_index.json in this folder"):
        DiffusionPipeline.from_pretrained(REPO)
    with pytest.raises(LoadError, match=r"org/tiny-pipe: has no files in the subfolder 'unet'"):
        TinyModel.from_pretrained(REPO, subfolder="unet")


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", "..", "C:evil"])
def test_component_names_that_leave_the_snapshot_are_refused(hub: LocalHub, tmp_path: Path, name: str) -> None:
    publish(hub, tmp_path)
    index = json.loads(hub.files(REPO)["model_index.json"])
    index[name] = ["diffusers", "TinyModel"]
    hub.commit(REPO, {"model_index.json": json.dumps(index).encode()})
    with pytest.raises(LoadError, match=r"not a plain file or folder name.*refusing to leave the snapshot"):
        DiffusionPipeline.from_pretrained(REPO)
    assert all(p.endswith("model_index.json") for p in hub.downloads())


def test_class_name_module_that_leaves_the_snapshot_is_refused(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    index = json.loads(hub.files(REPO)["model_index.json"])
    index["_class_name"] = ["../../outside", "TinyPipeline"]
    hub.commit(REPO, {"model_index.json": json.dumps(index).encode()})
    with pytest.raises(LoadError, match=r"_class_name.*not a plain file"):
        DiffusionPipeline.from_pretrained(REPO, trust_remote_code=True)


def test_shard_index_that_leaves_the_snapshot_is_refused(hub: LocalHub, tmp_path: Path) -> None:
    pipe = tiny_pipeline(7)
    folder = tmp_path / "sharded"
    pipe.save_pretrained(folder, max_shard_size=20)
    index_name = "model/diffusion_pytorch_model.safetensors.index.json"
    index = json.loads((folder / index_name).read_text())
    first_key = sorted(index["weight_map"])[0]
    index["weight_map"][first_key] = "../../../../../etc/passwd"
    (folder / index_name).write_text(json.dumps(index))
    hub.upload_folder(REPO, folder)
    with pytest.raises(LoadError, match=r"points outside the folder"):
        DiffusionPipeline.from_pretrained(REPO)


def test_sharded_checkpoint_downloads_every_shard(hub: LocalHub, tmp_path: Path) -> None:
    pipe = tiny_pipeline(8)
    pipe.save_pretrained(tmp_path / "sharded", max_shard_size=20)
    hub.upload_folder(REPO, tmp_path / "sharded")
    loaded = DiffusionPipeline.from_pretrained(REPO)
    assert isinstance(loaded, TinyPipeline) and same_weights(loaded.model, pipe.model)
    shards = [p for p in hub.downloads() if "-of-" in p]
    assert len(shards) >= 2


def test_malformed_model_index_entry(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    hub.commit(REPO, {"model_index.json": b"[1, 2]"})
    with pytest.raises((LoadError, ConfigError), match=r"expected a JSON object"):
        DiffusionPipeline.from_pretrained(REPO)
