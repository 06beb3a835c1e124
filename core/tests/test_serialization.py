"""Weight-file names, shards, index files, reading and atomic writing (difflux.serialization)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from difflux.errors import ConfigError, LoadError
from difflux.serialization import (
    WeightsName,
    atomic_folder,
    find_weight_files,
    index_file_name,
    iter_weight_shards,
    load_weights_file,
    parse_size,
    parse_weights_name,
    plan_shards,
    save_state_dict,
    weights_file_name,
)
from safetensors.torch import load_file, save_file


def _state(seed: int = 0, sizes: tuple[int, ...] = (10, 300, 20, 5, 260, 40)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(n, generator=g) for i, n in enumerate(sizes)}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({}, "diffusion_pytorch_model.safetensors"),
        ({"variant": "fp16"}, "diffusion_pytorch_model.fp16.safetensors"),
        ({"shard": (1, 3)}, "diffusion_pytorch_model-00001-of-00003.safetensors"),
        ({"shard": (2, 3), "variant": "fp16"}, "diffusion_pytorch_model.fp16-00002-of-00003.safetensors"),
        ({"safetensors": False}, "diffusion_pytorch_model.bin"),
        ({"safetensors": False, "variant": "ema", "shard": (3, 12)}, "diffusion_pytorch_model.ema-00003-of-00012.bin"),
    ],
)
def test_weights_file_names(kwargs: dict, name: str) -> None:
    assert weights_file_name(**kwargs) == name
    parsed = parse_weights_name(name)
    assert parsed == WeightsName(
        "diffusion_pytorch_model",
        kwargs.get("variant"),
        "safetensors" if kwargs.get("safetensors", True) else "bin",
        kwargs.get("shard"),
    )


def test_index_file_names() -> None:
    assert index_file_name() == "diffusion_pytorch_model.safetensors.index.json"
    assert index_file_name(variant="fp16") == "diffusion_pytorch_model.safetensors.index.fp16.json"
    assert index_file_name(safetensors=False) == "diffusion_pytorch_model.bin.index.json"
    parsed = parse_weights_name("diffusion_pytorch_model.safetensors.index.fp16.json")
    assert parsed is not None and parsed.is_index and parsed.variant == "fp16"
    # the transformers-style variant shard name is read too
    old = parse_weights_name("model-00001-of-00002.fp16.safetensors")
    assert old == WeightsName("model", "fp16", "safetensors", (1, 2))
    assert parse_weights_name("config.json") is None
    assert parse_weights_name("diffusion_pytorch_model.ckpt") is None


# -- sizes and shards ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["10GB", "5MB", "1KB", "3TB", "1.5GB", " 20 kb", "7gb"])
def test_parse_size_matches_hub(text: str) -> None:
    from huggingface_hub.serialization._base import parse_size_to_int

    assert parse_size(text) == parse_size_to_int(text.replace(" ", ""))


def test_parse_size_other_forms() -> None:
    assert parse_size(1234) == 1234
    assert parse_size("2KiB") == 2048
    assert parse_size("1MiB") == 2**20
    assert parse_size("300") == 300
    for bad in ("10XB", "", "GB", "-1GB", 0, "0KB", True):
        with pytest.raises(ConfigError):
            parse_size(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [100, 1000, 1200, 2000, 10**9])
def test_plan_shards_matches_hub(limit: int) -> None:
    from huggingface_hub import split_torch_state_dict_into_shards

    state = _state()
    state["tied.weight"] = state["layer1.weight"]  # shares storage: same shard, counted once
    ours = plan_shards(state, limit, variant="fp16")
    hub = split_torch_state_dict_into_shards(
        state, filename_pattern="diffusion_pytorch_model{suffix}.fp16.safetensors", max_shard_size=limit
    )
    # Diffusers renames the hub's "name-0000x-of-0000y.fp16" shards to "name.fp16-0000x-of-0000y"
    hub_files = {_diffusers_variant_name(name): sorted(keys) for name, keys in hub.filename_to_tensors.items()}
    assert {name: sorted(keys) for name, keys in ours.files.items()} == hub_files
    assert ours.total_size == hub.metadata["total_size"]
    assert ours.is_sharded == hub.is_sharded


def _diffusers_variant_name(hub_name: str) -> str:
    # hub pattern gives "diffusion_pytorch_model-00001-of-00003.fp16.safetensors"
    parsed = parse_weights_name(hub_name)
    assert parsed is not None
    return weights_file_name(parsed.prefix, variant=parsed.variant, shard=parsed.shard)


def test_save_state_dict_sharded_round_trip(tmp_path: Path) -> None:
    state = _state()
    written = save_state_dict(state, tmp_path, variant="fp16", max_shard_size=1200)
    names = sorted(p.name for p in written)
    assert "diffusion_pytorch_model.safetensors.index.fp16.json" in names
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in state.values())
    assert set(index["weight_map"]) == set(state)
    weights = find_weight_files(tmp_path, variant="fp16")
    assert weights.index is not None and len(weights.files) > 1
    got: dict[str, torch.Tensor] = {}
    for path, tensors in iter_weight_shards(weights):
        assert set(tensors) == {k for k, v in index["weight_map"].items() if v == path.name}
        got.update(tensors)
    assert set(got) == set(state)
    for key in state:
        assert torch.equal(got[key], state[key])
    # safetensors metadata as Diffusers writes it
    from safetensors import safe_open

    with safe_open(str(weights.files[0]), framework="pt") as fh:
        assert fh.metadata() == {"format": "pt"}


def test_aliased_tensors_are_saved(tmp_path: Path) -> None:
    base = torch.arange(12.0)
    state = {"a": base, "b": base, "c": base[:6]}
    save_state_dict(state, tmp_path)
    got = load_file(str(tmp_path / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(got["a"], base) and torch.equal(got["b"], base) and torch.equal(got["c"], base[:6])


def test_bin_round_trip_weights_only(tmp_path: Path) -> None:
    state = _state(sizes=(4, 6))
    save_state_dict(state, tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    weights = find_weight_files(tmp_path, use_safetensors=False)
    assert weights.format == "bin"
    got = load_weights_file(weights.files[0])
    assert all(torch.equal(got[k], state[k]) for k in state)


# -- finding files ------------------------------------------------------------------------------


def test_pickle_needs_opt_in(tmp_path: Path) -> None:
    save_state_dict(_state(sizes=(3,)), tmp_path, safe_serialization=False)
    with pytest.raises(LoadError, match="use_safetensors=False"):
        find_weight_files(tmp_path)
    with pytest.raises(LoadError, match="use_safetensors=True"):
        find_weight_files(tmp_path, use_safetensors=True)
    assert find_weight_files(tmp_path, use_safetensors=False).format == "bin"


def test_safetensors_preferred_over_bin(tmp_path: Path) -> None:
    save_state_dict(_state(sizes=(3,)), tmp_path, safe_serialization=False)
    save_state_dict(_state(sizes=(3,)), tmp_path)
    assert find_weight_files(tmp_path, use_safetensors=False).format == "safetensors"


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "diffusion_pytorch_model.bin"
    torch.save({"w": torch.zeros(2), "obj": WeightsName("x", None, "bin")}, path)
    with pytest.raises(LoadError, match=r"diffusion_pytorch_model\.bin"):
        load_weights_file(path)


def test_missing_variant_lists_the_variants(tmp_path: Path) -> None:
    save_state_dict(_state(sizes=(3,)), tmp_path, variant="fp16")
    save_state_dict(_state(sizes=(3,)), tmp_path, variant="ema", safe_serialization=False)
    with pytest.raises(LoadError) as err:
        find_weight_files(tmp_path, variant="bf16")
    message = str(err.value)
    assert "'bf16'" in message and "'fp16'" in message and "'ema'" in message
    with pytest.raises(LoadError, match=r"pass variant='(ema|fp16)'"):
        find_weight_files(tmp_path)


def test_no_weights_at_all(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LoadError, match="no weights found"):
        find_weight_files(tmp_path)


@pytest.mark.parametrize("entry", ["../outside.safetensors", "/etc/outside.safetensors", "sub/../../x.safetensors"])
def test_index_entry_outside_folder_is_refused(tmp_path: Path, entry: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 8}, "weight_map": {"w": entry}}))
    with pytest.raises(LoadError) as err:
        find_weight_files(folder)
    assert str(index) in str(err.value)
    assert entry in str(err.value)


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "diffusion_pytorch_model-00001-of-00002.safetensors"}}))
    with pytest.raises(LoadError, match="00001-of-00002"):
        find_weight_files(tmp_path)


def test_malformed_index(tmp_path: Path) -> None:
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text("{not json")
    with pytest.raises(LoadError, match=r"index\.json"):
        find_weight_files(tmp_path)


def test_truncated_safetensors_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError) as err:
        list(iter_weight_shards(find_weight_files(tmp_path)))
    assert str(path) in str(err.value)
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(LoadError, match=r"diffusion_pytorch_model\.safetensors"):
        load_weights_file(path)


def test_corrupt_bin_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "diffusion_pytorch_model.bin"
    torch.save({"w": torch.randn(16)}, path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(LoadError, match=r"diffusion_pytorch_model\.bin"):
        load_weights_file(path)


# -- atomic folders -----------------------------------------------------------------------------


def test_atomic_folder_creates_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_folder(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        (tmp / "a.txt").write_text("hello")
        assert not target.exists()
    assert (target / "a.txt").read_text() == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    mode = stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o777 & ~umask


def test_atomic_folder_error_leaves_previous_folder_identical(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    save_state_dict(_state(), target, max_shard_size=1000)
    (target / "notes.txt").write_text("mine")
    os.chmod(target, 0o750)
    before = _snapshot(target)
    with pytest.raises(RuntimeError, match="boom"), atomic_folder(target) as tmp:
        save_state_dict(_state(seed=1), tmp)
        raise RuntimeError("boom")
    assert _snapshot(target) == before
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_folder_keeps_user_files_and_drops_stale_shards(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    save_state_dict(_state(), target, max_shard_size=1000)  # sharded
    save_state_dict(_state(), target, variant="fp16")  # another variant: kept
    (target / "README.md").write_text("keep me")
    (target / "extra").mkdir()
    (target / "extra" / "x.txt").write_text("x")
    with atomic_folder(target) as tmp:
        save_state_dict(_state(seed=2), tmp)  # unsharded now
    names = sorted(p.name for p in target.iterdir())
    assert names == [
        "README.md",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.safetensors",
        "extra",
    ]
    assert (target / "extra" / "x.txt").read_text() == "x"
    weights = find_weight_files(target)
    assert weights.index is None
    assert torch.equal(load_weights_file(weights.files[0])["layer0.weight"], _state(seed=2)["layer0.weight"])


def test_atomic_folder_nested_components(tmp_path: Path) -> None:
    target = tmp_path / "pipe"
    target.mkdir()
    (target / "unet").mkdir()
    save_state_dict(_state(), target / "unet", max_shard_size=1000)
    (target / "unet" / "notes.txt").write_text("n")
    with atomic_folder(target) as tmp:
        (tmp / "model_index.json").write_text("{}")
        with atomic_folder(tmp / "unet") as inner:
            save_state_dict(_state(seed=3), inner)
    assert sorted(p.name for p in (target / "unet").iterdir()) == [
        "diffusion_pytorch_model.safetensors",
        "notes.txt",
    ]
    assert (target / "model_index.json").is_file()


def test_atomic_folder_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"), atomic_folder(target):
        pass
    assert target.read_text() == "x"


# -- interop with diffusers' files ---------------------------------------------------------------


def test_reads_diffusers_sharded_variant_files(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=2,
    )
    model.save_pretrained(tmp_path / "a", max_shard_size="20KB", variant="fp16")
    model.save_pretrained(tmp_path / "b", safe_serialization=False)
    reference = model.state_dict()
    for folder, kwargs in ((tmp_path / "a", {"variant": "fp16"}), (tmp_path / "b", {"use_safetensors": False})):
        weights = find_weight_files(folder, **kwargs)  # type: ignore[arg-type]
        got: dict[str, torch.Tensor] = {}
        for _, tensors in iter_weight_shards(weights):
            got.update(tensors)
        assert set(got) == set(reference)
        assert all(torch.equal(got[k], reference[k]) for k in reference)
    # our plan of the same tensors names the same files with the same index
    ours = plan_shards(reference, "20KB", variant="fp16")
    theirs = json.loads((tmp_path / "a" / index_file_name(variant="fp16")).read_text())
    assert ours.index() == theirs
