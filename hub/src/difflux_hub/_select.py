"""Which files of a repo ``from_pretrained`` needs: pure functions over the repo's file list.

The rules, as Diffusers defines them:

- a pipeline needs ``model_index.json`` and, for every component it lists, that component's
  folder: its config and other small files, plus one family of weight files;
- the weight family is the requested ``variant`` (a pipeline component without it falls back
  to its default weights, with a warning; a variant that no component has is an error);
- safetensors are preferred; pickled ``.bin`` files are taken only with ``use_safetensors=False``;
- ONNX files only with ``use_onnx=True`` (or an ``Onnx*`` pipeline); Flax and other framework
  files never.

File names taken from ``model_index.json`` must be plain names: nothing that leaves the folder.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from difflux.errors import LoadError
from difflux.options import LoadOptions
from difflux.serialization import parse_weights_name

__all__ = ["Selection", "check_plain_name", "select_folder", "select_pipeline"]

INDEX_FILE = "model_index.json"
_ONNX = (".onnx", ".onnx_data", ".pb")
#: Weights of other frameworks and whole-model checkpoints: never part of a Diffusers component.
_NEVER = (".msgpack", ".h5", ".ckpt", ".ot", ".gguf")


@dataclasses.dataclass(frozen=True)
class Selection:
    """The repo paths to download, and the warnings to show about the choice."""

    files: tuple[str, ...]
    warnings: tuple[str, ...] = ()


def check_plain_name(name: str, where: str) -> str:
    """Refuse a name from a repo's JSON that is not one plain path segment (no ``..``, ``/``, drive)."""
    plain = (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "\x00" not in name
        and PurePosixPath(name).name == name
        and PureWindowsPath(name).name == name
        and not re.match(r"^[a-zA-Z]:", name)
    )
    if not plain:
        raise LoadError(
            f"{where}: {name!r} is not a plain file or folder name; names in a repo's JSON files "
            "must not contain path separators, drive letters or '..' (refusing to leave the snapshot folder)"
        )
    return name


def _is_entry(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, str) for v in value)


def _skipped(path: str, onnx: bool) -> bool:
    lower = path.lower()
    if lower.endswith(_NEVER):
        return True
    return lower.endswith(_ONNX) and not onnx


def _label(variant: str | None) -> str:
    return "default (no variant)" if variant is None else repr(variant)


def _weights_by_family(names: Iterable[str]) -> dict[tuple[str | None, str], list[str]]:
    families: dict[tuple[str | None, str], list[str]] = {}
    for path in names:
        parsed = parse_weights_name(PurePosixPath(path).name)
        if parsed is not None:
            families.setdefault((parsed.variant, parsed.format), []).append(path)
    return families


def _choose_weights(
    repo: str,
    where: str,
    files: list[str],
    options: LoadOptions,
    *,
    fallback: bool,
    warnings: list[str],
) -> list[str]:
    """The weight files of one folder to download, by variant and format."""
    families = _weights_by_family(files)
    if not families:
        return []
    variants = {v for v, _ in families}
    variant = options.variant
    if variant not in variants:
        listing = ", ".join(sorted(_label(v) for v in variants))
        if variant is not None and fallback and None in variants:
            warnings.append(
                f"{repo}: {where} has no {variant!r} variant weights; its default weights are downloaded instead"
            )
            variant = None
        elif variant is None:
            some = sorted(v for v in variants if v is not None)[0]
            raise LoadError(f"{repo}: {where} has no default weights, only variants {listing}; pass variant={some!r}")
        else:
            raise LoadError(f"{repo}: {where} has no weights for variant {variant!r}; it has: {listing}")
    if (variant, "safetensors") in families:
        return families[(variant, "safetensors")]
    pickled = families[(variant, "bin")]
    if options.use_safetensors is False:
        return pickled
    names = ", ".join(PurePosixPath(p).name for p in pickled)
    if options.use_safetensors is True:
        raise LoadError(f"{repo}: use_safetensors=True, but {where} has only pickled weights ({names})")
    raise LoadError(
        f"{repo}: {where} has only pickled weights ({names}); difflux does not load pickle files unless "
        "asked: pass use_safetensors=False to download and load them (with torch.load(weights_only=True))"
    )


def _folder_files(files: Iterable[str], folder: str) -> dict[str, list[str]]:
    """Files under ``folder`` ("" for the root), grouped by their own directory."""
    prefix = f"{folder}/" if folder else ""
    by_dir: dict[str, list[str]] = {}
    for path in files:
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix) :]
        if not folder and "/" in rest:
            continue  # a root-level component reads only the root's own files
        by_dir.setdefault(str(PurePosixPath(path).parent), []).append(path)
    return by_dir


def _select_in(
    repo: str,
    files: Iterable[str],
    folder: str,
    options: LoadOptions,
    *,
    fallback: bool,
    onnx: bool,
    warnings: list[str],
) -> list[str]:
    chosen: list[str] = []
    for directory, paths in sorted(_folder_files(files, folder).items()):
        where = f"the folder {directory!r}" if directory != "." else "the repo root"
        kept = [p for p in paths if not _skipped(p, onnx)]
        weights = {p for p in kept if parse_weights_name(PurePosixPath(p).name) is not None}
        chosen.extend(p for p in kept if p not in weights)
        chosen.extend(_choose_weights(repo, where, sorted(weights), options, fallback=fallback, warnings=warnings))
    return chosen


def select_folder(repo: str, files: Iterable[str], folder: str | None, options: LoadOptions) -> Selection:
    """The files of a single model or scheduler in ``folder`` (``None``: the repo root)."""
    files = list(files)
    sub = (folder or "").strip("/")
    if sub:
        for part in sub.split("/"):
            check_plain_name(part, f"{repo}: subfolder={folder!r}")
    warnings: list[str] = []
    onnx = bool(options.use_onnx)
    chosen = _select_in(repo, files, sub, options, fallback=False, onnx=onnx, warnings=warnings)
    if sub and not chosen:
        raise LoadError(f"{repo}: has no files in the subfolder {sub!r}")
    return Selection(tuple(sorted(set(chosen))), tuple(warnings))


def select_pipeline(repo: str, files: Iterable[str], index: Mapping[str, Any], options: LoadOptions) -> Selection:
    """The files a pipeline needs: ``model_index.json`` and each listed component's folder."""
    files = list(files)
    where = f"{repo}: {INDEX_FILE}"
    class_name = index.get("_class_name")
    chosen = [INDEX_FILE]
    if isinstance(class_name, (list, tuple)) and _is_entry(class_name):
        module = check_plain_name(f"{class_name[0]}.py", f"{where}: _class_name")
        if module in files:
            chosen.append(module)
    onnx = options.use_onnx if options.use_onnx is not None else str(class_name).startswith("Onnx")
    components = []
    for key, value in index.items():
        if key.startswith("_") or not _is_entry(value):
            continue
        check_plain_name(key, f"{where}: component")
        check_plain_name(f"{value[0]}.py", f"{where}: component {key!r} library")
        components.append(key)
    if options.variant is not None:
        has_variant = any(
            variant == options.variant
            for name in components
            for variant, _ in _weights_by_family(p for p in files if p.startswith(f"{name}/"))
        )
        if not has_variant:
            raise LoadError(
                f"{repo}: no component has weights for variant {options.variant!r} "
                f"(components: {', '.join(components) or 'none'}); pass variant=None for the default weights"
            )
    warnings: list[str] = []
    for name in components:
        chosen.extend(_select_in(repo, files, name, options, fallback=True, onnx=onnx, warnings=warnings))
    return Selection(tuple(dict.fromkeys(chosen)), tuple(warnings))
