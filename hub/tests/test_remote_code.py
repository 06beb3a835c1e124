"""Custom pipelines and components: nothing from a repo is imported without trust_remote_code=True."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from difflux import DiffusionPipeline
from difflux.errors import ConfigError, LoadError
from difflux_hub import RemoteCodeError
from hubserver import LocalHub
from hubtiny import TinyPipeline
from test_download import REPO, publish

ROOT = Path(__file__).resolve().parents[2]


def pipeline_code(marker: Path, name: str = "MyPipe") -> bytes:
    return f'''
from pathlib import Path
from difflux import DiffusionPipeline
from hubtiny import TinyModel, TinyScheduler

Path({str(marker)!r}).write_text("imported")


class {name}(DiffusionPipeline):
    def __init__(self, model: TinyModel, scheduler: TinyScheduler) -> None:
        super().__init__()
        self.register_modules(model=model, scheduler=scheduler)

    def __call__(self) -> str:
        return "{name} ran"
'''.encode()


def component_code(marker: Path) -> bytes:
    return f"""
from pathlib import Path
import torch
from difflux import ModelMixin

Path({str(marker)!r}).write_text("imported")


class MyModel(ModelMixin):
    def __init__(self, channels: int = 2, hidden: int = 3) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(channels, hidden)
""".encode()


def remote_modules() -> list[str]:
    return [m for m in sys.modules if m.startswith("_difflux_remote_")]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "imported.txt"


def test_custom_component_needs_trust(hub: LocalHub, tmp_path: Path, marker: Path) -> None:
    publish(hub, tmp_path)
    index = json.loads(hub.files(REPO)["model_index.json"])
    index["model"] = ["my_model", "MyModel"]
    hub.commit(REPO, {"model_index.json": json.dumps(index).encode(), "model/my_model.py": component_code(marker)})
    before = remote_modules()
    with pytest.raises(RemoteCodeError, match=r"my_model.py \(custom component 'model'\).*trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(REPO)
    assert not marker.exists() and remote_modules() == before
    pipe = DiffusionPipeline.from_pretrained(REPO, trust_remote_code=True)
    assert marker.exists()
    assert type(pipe.model).__name__ == "MyModel" and type(pipe.model).__module__.startswith("_difflux_remote_my_model")


def test_class_name_module_in_the_repo_needs_trust(hub: LocalHub, tmp_path: Path, marker: Path) -> None:
    publish(hub, tmp_path)
    index = json.loads(hub.files(REPO)["model_index.json"])
    index["_class_name"] = ["pipeline", "MyPipe"]
    hub.commit(REPO, {"model_index.json": json.dumps(index).encode(), "pipeline.py": pipeline_code(marker)})
    with pytest.raises(RemoteCodeError, match=r"'_class_name': \['pipeline', 'MyPipe'\].*trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(REPO)
    assert not marker.exists()
    pipe = DiffusionPipeline.from_pretrained(REPO, trust_remote_code=True)
    assert pipe() == "MyPipe ran"


def test_custom_pipeline_from_another_repo_needs_trust(hub: LocalHub, tmp_path: Path, marker: Path) -> None:
    publish(hub, tmp_path)  # a plain repo: nothing custom in it
    hub.commit("other/community", {"pipeline.py": pipeline_code(marker, "CommunityPipe")})
    with pytest.raises(RemoteCodeError, match=r"custom_pipeline='other/community'.*trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(REPO, custom_pipeline="other/community")
    assert not marker.exists()
    assert not [p for p in hub.downloads() if "other/community" in p]  # refused before any download
    pipe = DiffusionPipeline.from_pretrained(REPO, custom_pipeline="other/community", trust_remote_code=True)
    assert pipe() == "CommunityPipe ran"


def test_custom_revision_pins_the_code_and_it_is_cached_offline(
    hub: LocalHub, tmp_path: Path, marker: Path, offline: object
) -> None:
    publish(hub, tmp_path)
    old = hub.commit("other/community", {"pipeline.py": pipeline_code(marker, "OldPipe")})
    hub.commit("other/community", {"pipeline.py": pipeline_code(marker, "NewPipe")})
    kwargs = {"custom_pipeline": "other/community", "trust_remote_code": True}
    assert DiffusionPipeline.from_pretrained(REPO, custom_revision=old, **kwargs)() == "OldPipe ran"
    assert DiffusionPipeline.from_pretrained(REPO, **kwargs)() == "NewPipe ran"
    code = list((tmp_path / "hf_home" / "hub" / "models--other--community" / "snapshots").glob("*/pipeline.py"))
    assert {p.parent.name for p in code} == {old, hub.repos["other/community"].refs["main"]}  # one per commit
    offline.on()  # type: ignore[attr-defined]
    count = len(hub.requests)
    assert DiffusionPipeline.from_pretrained(REPO, **kwargs)() == "NewPipe ran"
    assert len(hub.requests) == count


def test_disable_switch_refuses_even_with_trust(
    hub: LocalHub, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(hub, tmp_path)
    hub.commit("other/community", {"pipeline.py": pipeline_code(marker)})
    monkeypatch.setenv("DIFFLUX_DISABLE_REMOTE_CODE", "1")
    with pytest.raises(RemoteCodeError, match=r"DIFFLUX_DISABLE_REMOTE_CODE is set, which forbids"):
        DiffusionPipeline.from_pretrained(REPO, custom_pipeline="other/community", trust_remote_code=True)
    assert not marker.exists()


@pytest.mark.parametrize("disabled", [False, True], ids=["no-trust", "disabled-with-trust"])
@pytest.mark.parametrize("form", ["file", "folder"])
def test_local_custom_pipeline_needs_trust_and_obeys_the_switch(
    hub: LocalHub, tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch, form: str, disabled: bool
) -> None:
    pipe = publish(hub, tmp_path)
    pipe.save_pretrained(tmp_path / "local")
    code = tmp_path / "mine" / "pipeline.py"
    code.parent.mkdir()
    code.write_bytes(pipeline_code(marker, "LocalPipe"))
    custom = str(code if form == "file" else code.parent)
    before = remote_modules()
    if disabled:
        monkeypatch.setenv("DIFFLUX_DISABLE_REMOTE_CODE", "1")
    with pytest.raises(RemoteCodeError, match="DIFFLUX_DISABLE_REMOTE_CODE" if disabled else "trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(tmp_path / "local", custom_pipeline=custom, trust_remote_code=disabled)
    assert not marker.exists() and remote_modules() == before
    monkeypatch.delenv("DIFFLUX_DISABLE_REMOTE_CODE", raising=False)
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "local", custom_pipeline=custom, trust_remote_code=True)
    assert loaded() == "LocalPipe ran" and marker.exists()


@pytest.mark.parametrize("value", ["False", "no", 0, 1, None, [True]])
def test_trust_remote_code_takes_only_a_bool(hub: LocalHub, tmp_path: Path, marker: Path, value: object) -> None:
    publish(hub, tmp_path)
    index = json.loads(hub.files(REPO)["model_index.json"])
    index["_class_name"] = ["pipeline", "MyPipe"]
    hub.commit(REPO, {"model_index.json": json.dumps(index).encode(), "pipeline.py": pipeline_code(marker)})
    with pytest.raises(ConfigError, match=r"trust_remote_code=.*expected True or False"):
        DiffusionPipeline.from_pretrained(REPO, trust_remote_code=value)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["custom_pipeline", "class_name", "component"])
def test_a_fifo_in_place_of_code_is_refused_without_hanging(
    tmp_path: Path, marker: Path, how: str, hub: LocalHub
) -> None:
    """Code files are checked to be regular files before they are read (trust given)."""
    pipe = publish(hub, tmp_path)
    folder = tmp_path / "local"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    kwargs: dict[str, object] = {}
    if how == "custom_pipeline":
        fifo = tmp_path / "code" / "pipeline.py"
        fifo.parent.mkdir()
        kwargs["custom_pipeline"] = str(fifo)
    elif how == "class_name":
        fifo = folder / "pipeline.py"
        index["_class_name"] = ["pipeline", "MyPipe"]
    else:
        fifo = folder / "model" / "my_model.py"
        index["model"] = ["my_model", "MyModel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    os.mkfifo(fifo)
    with pytest.raises(LoadError, match="FIFO"):
        DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, **kwargs)


def test_code_inside_the_hf_cache_counts_as_repo_code(hub: LocalHub, tmp_path: Path, marker: Path) -> None:
    publish(hub, tmp_path)
    index = json.loads(hub.files(REPO)["model_index.json"])
    index["_class_name"] = ["pipeline", "MyPipe"]
    hub.commit(REPO, {"model_index.json": json.dumps(index).encode(), "pipeline.py": pipeline_code(marker)})
    folder = DiffusionPipeline.download(REPO)
    with pytest.raises(RemoteCodeError):
        DiffusionPipeline.from_pretrained(REPO, custom_pipeline=str(folder / "pipeline.py"))
    assert not marker.exists()


def test_plain_pipeline_is_unaffected(hub: LocalHub, tmp_path: Path) -> None:
    publish(hub, tmp_path)
    assert isinstance(DiffusionPipeline.from_pretrained(REPO), TinyPipeline)


def test_environment_variables_of_the_hub_are_documented() -> None:
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "hub" / "src").rglob("*.py"))
    variables = set(re.findall(r"\bDIFFLUX_[A-Z_]+\b", sources))
    assert "DIFFLUX_DISABLE_REMOTE_CODE" in variables
    documented = (ROOT / "docs" / "environment.md").read_text(encoding="utf-8")
    assert not [v for v in variables if f"| `{v}` |" not in documented]
