"""Download through the local Hub: selective files, variants, safetensors rules, options, cache, offline."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from difflux import DiffusionPipeline
from difflux.errors import LoadError
from hubserver import LocalHub
from hubtiny import TOKEN, TinyModel, TinyPipeline, TinyScheduler, tiny_pipeline

REPO = "org/tiny-pipe"


def publish(
    hub: LocalHub,
    tmp_path: Path,
    repo_id: str = REPO,
    *,
    extras: dict[str, bytes] | None = None,
    variant: str | None = None,
    seed: int = 0,
    extra: bool = False,
    **kwargs: object,
) -> TinyPipeline:
    """Save a tiny pipeline (default and, with ``variant``, variant weights) and commit it to the Hub."""
    pipe = tiny_pipeline(seed, extra=extra)
    folder = tmp_path / f"publish-{repo_id.replace('/', '-')}-{seed}"
    pipe.save_pretrained(folder)
    if variant is not None:
        pipe.save_pretrained(folder, variant=variant)
    hub.upload_folder(repo_id, folder, **kwargs)  # type: ignore[arg-type]
    if extras:
        hub.commit(repo_id, extras, **kwargs)  # type: ignore[arg-type]
    return pipe


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pipeline_by_repo_id_downloads_only_what_it_needs(hub: LocalHub, tmp_path: Path) -> None:
    original = publish(
        hub,
        tmp_path,
        extras={
            "model/diffusion_pytorch_model.bin": b"pickle",  # safetensors exist: never fetched
            "model/diffusion_pytorch_model.msgpack": b"flax",
            "model/model.onnx": b"onnx",
            "unused/diffusion_pytorch_model.safetensors": b"not a component",
            "README.md": b"# card",
        },
    )
    pipe = DiffusionPipeline.from_pretrained(REPO)
    assert isinstance(pipe, TinyPipeline)
    assert same_weights(pipe.model, original.model)
    assert pipe.extra is None
    fetched = {p.split("/resolve/", 1)[1].split("/", 1)[1] for p in hub.downloads()}
    assert fetched == {
        "model_index.json",
        "model/config.json",
        "model/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    }


def test_download_returns_the_snapshot_folder_and_from_pretrained_reuses_it(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    folder = DiffusionPipeline.download(REPO)
    commit = hub.repos[REPO].refs["main"]
    assert folder.name == commit and folder.parent.name == "snapshots"
    assert (folder / "model" / "diffusion_pytorch_model.safetensors").is_file()
    before = len(hub.downloads())
    DiffusionPipeline.from_pretrained(REPO)
    assert len(hub.downloads()) == before  # warm cache: no file is fetched again
    info_calls = [p for m, p in hub.requests if p.startswith(f"/api/models/{REPO}/revision/")]
    assert len(info_calls) == 2  # one revision look-up per call, nothing else


def test_force_download_fetches_again(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    DiffusionPipeline.download(REPO)
    before = len(hub.downloads())
    DiffusionPipeline.download(REPO, force_download=True)
    assert len(hub.downloads()) - before == 4


def test_cache_dir_option(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    cache = tmp_path / "elsewhere"
    folder = DiffusionPipeline.download(REPO, cache_dir=cache)
    assert folder.is_relative_to(cache)
    assert (cache / "models--org--tiny-pipe" / "refs" / "main").read_text() == folder.name


def test_revision_pins_a_commit_and_a_branch(hub: LocalHub, tmp_path: Path) -> None:
    first = publish(hub, tmp_path, seed=1)
    first_commit = hub.repos[REPO].refs["main"]
    second = publish(hub, tmp_path, seed=2)
    hub.upload_folder(REPO, tmp_path / f"publish-{REPO.replace('/', '-')}-1", new_branch="old")
    latest = DiffusionPipeline.from_pretrained(REPO)
    pinned = DiffusionPipeline.from_pretrained(REPO, revision=first_commit)
    branch = DiffusionPipeline.from_pretrained(REPO, revision="old")
    assert same_weights(latest.model, second.model)
    assert same_weights(pinned.model, first.model)
    assert same_weights(branch.model, first.model)


def test_variant_files_and_fallback_with_warning(
    hub: LocalHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipe = tiny_pipeline(3, extra=True)
    folder = tmp_path / "variant"
    pipe.save_pretrained(folder)
    pipe.model.save_pretrained(folder / "model", variant="fp16")  # only `model` has an fp16 variant
    hub.upload_folder(REPO, folder)
    with caplog.at_level(logging.WARNING):
        loaded = DiffusionPipeline.from_pretrained(REPO, variant="fp16")
    assert same_weights(loaded.model, pipe.model) and same_weights(loaded.extra, pipe.extra)
    fetched = {p.rsplit("/", 2)[-2] + "/" + p.rsplit("/", 1)[-1] for p in hub.downloads()}
    assert "model/diffusion_pytorch_model.fp16.safetensors" in fetched
    assert "model/diffusion_pytorch_model.safetensors" not in fetched  # the variant replaces the default
    assert "extra/diffusion_pytorch_model.safetensors" in fetched  # fallback for `extra`
    assert any("'extra'" in r.getMessage() and "fp16" in r.getMessage() for r in caplog.records)


def test_variant_that_no_component_has(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    with pytest.raises(LoadError, match=r"org/tiny-pipe: no component has weights for variant 'bf16'"):
        DiffusionPipeline.from_pretrained(REPO, variant="bf16")
    assert hub.downloads() == [f"/{REPO}/resolve/{hub.repos[REPO].refs['main']}/model_index.json"]


def test_safetensors_rules(hub: LocalHub, tmp_path: Path) -> None:
    pipe = tiny_pipeline(4)
    folder = tmp_path / "pickled"
    pipe.save_pretrained(folder, safe_serialization=False)
    hub.upload_folder(REPO, folder)
    with pytest.raises(LoadError, match=r"only pickled weights .*use_safetensors=False"):
        DiffusionPipeline.from_pretrained(REPO)
    with pytest.raises(LoadError, match=r"use_safetensors=True, but the folder 'model' has only pickled"):
        DiffusionPipeline.from_pretrained(REPO, use_safetensors=True)
    assert not any(p.endswith(".bin") for p in hub.downloads())  # refused before downloading
    loaded = DiffusionPipeline.from_pretrained(REPO, use_safetensors=False)
    assert same_weights(loaded.model, pipe.model)


def test_onnx_files_only_with_use_onnx(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path, extras={"model/model.onnx": b"onnx graph"})
    plain = DiffusionPipeline.download(REPO)
    assert not (plain / "model" / "model.onnx").exists()
    with_onnx = DiffusionPipeline.download(REPO, use_onnx=True)
    assert (with_onnx / "model" / "model.onnx").read_bytes() == b"onnx graph"


def test_model_and_scheduler_from_repo_subfolder(hub: LocalHub, tmp_path: Path) -> None:
    pipe = publish(hub, tmp_path, extras={"other/diffusion_pytorch_model.safetensors": b"x"})
    model = TinyModel.from_pretrained(REPO, subfolder="model")
    scheduler = TinyScheduler.from_pretrained(REPO, subfolder="scheduler")
    assert same_weights(model, pipe.model)
    assert scheduler.config.beta == 0.5
    fetched = {p.split("/", 5)[-1] for p in hub.downloads()}
    assert fetched == {
        "model/config.json",
        "model/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    }


def test_model_at_repo_root(hub: LocalHub, tmp_path: Path) -> None:
    torch.manual_seed(5)
    model = TinyModel()
    model.save_pretrained(tmp_path / "m")
    hub.upload_folder("org/tiny-model", tmp_path / "m")
    assert same_weights(TinyModel.from_pretrained("org/tiny-model"), model)
    with pytest.raises(LoadError, match=r"no weights for variant 'fp16'; it has: default"):
        TinyModel.from_pretrained("org/tiny-model", variant="fp16")


def test_private_repo_needs_the_token(hub: LocalHub, tmp_path: Path) -> None:
    hub.create_repo("org/secret", private=True)
    publish(hub, tmp_path, "org/secret")
    with pytest.raises(LoadError, match=r"org/secret: no such repo on the Hub, or it is private"):
        DiffusionPipeline.from_pretrained("org/secret")
    assert isinstance(DiffusionPipeline.from_pretrained("org/secret", token=TOKEN), TinyPipeline)


def test_offline_reuses_the_cache_with_no_request(hub: LocalHub, tmp_path: Path, offline: object) -> None:
    original = publish(hub, tmp_path)
    DiffusionPipeline.download(REPO)
    offline.on()  # type: ignore[attr-defined]
    count = len(hub.requests)
    pipe = DiffusionPipeline.from_pretrained(REPO)
    assert same_weights(pipe.model, original.model)
    assert len(hub.requests) == count
    # a repo never downloaded is not in the cache: a clear error, still no request
    with pytest.raises(LoadError, match=r"org/never-downloaded .*not all in the cache.*HF_HUB_OFFLINE"):
        DiffusionPipeline.from_pretrained("org/never-downloaded")
    assert len(hub.requests) == count


def test_local_files_only(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    with pytest.raises(LoadError, match=r"org/tiny-pipe .*not all in the cache"):
        DiffusionPipeline.from_pretrained(REPO, local_files_only=True)
    DiffusionPipeline.download(REPO)
    hub.stop()  # nothing answers now
    assert isinstance(DiffusionPipeline.from_pretrained(REPO, local_files_only=True), TinyPipeline)


def test_local_folder_is_not_sent_to_the_hub(hub: LocalHub, tmp_path: Path) -> None:
    pipe = tiny_pipeline(6)
    pipe.save_pretrained(tmp_path / "local")
    assert same_weights(DiffusionPipeline.from_pretrained(tmp_path / "local").model, pipe.model)
    assert hub.requests == []


def test_proxies_route_requests_through_the_proxy(
    hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    publish(hub, tmp_path)
    far = "http://hub.invalid"  # not resolvable: only the proxy can answer
    monkeypatch.setattr(constants, "ENDPOINT", far)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", far + "/{repo_id}/resolve/{revision}/{filename}")
    pipe = DiffusionPipeline.from_pretrained(REPO, proxies={"http": hub.url})
    assert isinstance(pipe, TinyPipeline)
    assert hub.proxied >= 4
