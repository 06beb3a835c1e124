"""push_to_hub on pipelines, models and schedulers, through the local Hub (regular and LFS uploads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from difflux import DiffusionPipeline
from difflux.errors import PluginError
from difflux.registry import reset_registry
from hubserver import LocalHub
from hubtiny import TOKEN, TinyModel, TinyPipeline, TinyScheduler, _TestPlugin, tiny_pipeline
from test_download import same_weights


def test_pipeline_push_then_load_round_trip(hub: LocalHub) -> None:
    pipe = tiny_pipeline(11, extra=True)
    info = pipe.push_to_hub("me/pushed", token=TOKEN, commit_message="first upload")
    files = hub.files("me/pushed")
    assert {
        "model_index.json",
        "model/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "extra/config.json",
    } <= set(files)
    assert json.loads(files["model_index.json"])["_class_name"] == "TinyPipeline"
    assert info.oid == hub.repos["me/pushed"].refs["main"]
    assert hub.repos["me/pushed"].commits[info.oid].message == "first upload"
    assert hub.lfs  # the weights went through the LFS upload path
    loaded = DiffusionPipeline.from_pretrained("me/pushed")
    assert isinstance(loaded, TinyPipeline)
    assert same_weights(loaded.model, pipe.model) and same_weights(loaded.extra, pipe.extra)


def test_model_push_with_variant_and_pickle(hub: LocalHub) -> None:
    torch.manual_seed(12)
    model = TinyModel()
    model.push_to_hub("me/model", token=TOKEN, variant="fp16")
    model.push_to_hub("me/model", token=TOKEN, safe_serialization=False)
    files = set(hub.files("me/model"))
    assert {"config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.bin"} <= files
    assert same_weights(TinyModel.from_pretrained("me/model", variant="fp16"), model)


def test_scheduler_push(hub: LocalHub) -> None:
    TinyScheduler(beta=0.25).push_to_hub("me/sched", token=TOKEN)
    assert json.loads(hub.files("me/sched")["scheduler_config.json"])["beta"] == 0.25
    assert TinyScheduler.from_pretrained("me/sched").config.beta == 0.25
    with pytest.raises(TypeError, match=r"takes no variant"):
        TinyScheduler().push_to_hub("me/sched", token=TOKEN, variant="fp16")


def test_private_repo_and_pull_request(hub: LocalHub) -> None:
    pipe = tiny_pipeline(13)
    pipe.push_to_hub("me/private", token=TOKEN, private=True)
    assert hub.repos["me/private"].private
    main_before = hub.repos["me/private"].refs["main"]
    info = tiny_pipeline(14).push_to_hub("me/private", token=TOKEN, create_pr=True)
    assert hub.repos["me/private"].refs["main"] == main_before  # main untouched
    assert info.pr_url is not None and info.pr_url.endswith("/discussions/1")
    from_pr = DiffusionPipeline.from_pretrained("me/private", revision="refs/pr/1", token=TOKEN)
    assert same_weights(from_pr.model, tiny_pipeline(14).model)


def test_push_without_a_valid_token_fails(hub: LocalHub) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError, match="401"):
        tiny_pipeline().push_to_hub("me/nope", token="hf_wrong")
    assert "me/nope" not in hub.repos


def test_push_without_the_hub_plugin_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DIFFLUX_LOAD_PLUGINS", "none")
    reset_registry(extra_plugins=[("hubtest", _TestPlugin())])
    with pytest.raises(PluginError, match=r"pip install difflux-hub"):
        tiny_pipeline().push_to_hub("me/x")
