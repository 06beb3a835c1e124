"""Weight files in the Diffusers on-disk format: names, shards, index files, reading, atomic writing.

File names (``prefix`` is ``diffusion_pytorch_model`` for Diffusers models):

==========================  ==================================================================
single file                 ``{prefix}.safetensors``, ``{prefix}.fp16.safetensors``
shards                      ``{prefix}-00001-of-00003.safetensors``,
                            ``{prefix}.fp16-00001-of-00003.safetensors``
index of the shards         ``{prefix}.safetensors.index.json``,
                            ``{prefix}.safetensors.index.fp16.json``
pickle (opt-in only)        the same names with ``.bin`` in place of ``.safetensors``
==========================  ==================================================================

Nothing here knows about ``torch.nn``: models (:mod:`difflux.modeling`) and pipelines call
these helpers with plain ``{key: tensor}`` dicts and folders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import torch

from ._files import check_regular_file
from .config import read_json
from .errors import ConfigError, LoadError

__all__ = [
    "WEIGHTS_NAME",
    "ShardPlan",
    "WeightFiles",
    "WeightsName",
    "atomic_folder",
    "check_replaceable",
    "find_weight_files",
    "index_file_name",
    "iter_weight_shards",
    "load_weights_file",
    "parse_size",
    "parse_weights_name",
    "plan_shards",
    "save_state_dict",
    "weights_file_name",
]

logger = logging.getLogger("difflux")

#: The file-name prefix of Diffusers model weights.
WEIGHTS_NAME = "diffusion_pytorch_model"
#: The shard limit Diffusers' ``save_pretrained`` uses by default.
DEFAULT_MAX_SHARD_SIZE = "10GB"

Format = Literal["safetensors", "bin"]

# -- names ---------------------------------------------------------------------------------

_SHARD = r"-(?P<index>\d{5})-of-(?P<count>\d{5})"
# Diffusers writes the variant before the shard number; transformers wrote it after. Read both.
_WEIGHTS_RE = re.compile(
    r"^(?P<prefix>[^.]+?)(?:" + _SHARD.replace("index", "i1").replace("count", "n1") + r")?"
    r"(?:\.(?P<variant>[^.]+?))?(?:" + _SHARD.replace("index", "i2").replace("count", "n2") + r")?"
    r"\.(?P<ext>safetensors|bin)$"
)
_INDEX_RE = re.compile(r"^(?P<prefix>[^.]+)\.(?P<ext>safetensors|bin)\.index(?:\.(?P<variant>[^.]+))?\.json$")


def _ext(safetensors: bool) -> Format:
    return "safetensors" if safetensors else "bin"


def weights_file_name(
    prefix: str = WEIGHTS_NAME,
    *,
    variant: str | None = None,
    safetensors: bool = True,
    shard: tuple[int, int] | None = None,
) -> str:
    """The file name Diffusers gives a weights file; ``shard=(1, 3)`` for the first of three."""
    name = prefix if variant is None else f"{prefix}.{variant}"
    if shard is not None:
        name += f"-{shard[0]:05d}-of-{shard[1]:05d}"
    return f"{name}.{_ext(safetensors)}"


def index_file_name(prefix: str = WEIGHTS_NAME, *, variant: str | None = None, safetensors: bool = True) -> str:
    """The name of the shard index: ``{prefix}.safetensors.index.json`` (``.index.{variant}.json``)."""
    middle = "index" if variant is None else f"index.{variant}"
    return f"{prefix}.{_ext(safetensors)}.{middle}.json"


@dataclasses.dataclass(frozen=True)
class WeightsName:
    """What a weights file name says: prefix, variant, format, and whether it is a shard or index."""

    prefix: str
    variant: str | None
    format: Format
    shard: tuple[int, int] | None = None
    is_index: bool = False

    @property
    def family(self) -> tuple[str, str | None, Format]:
        """Files of one family replace each other on save (same prefix, variant and format)."""
        return (self.prefix, self.variant, self.format)


def parse_weights_name(name: str) -> WeightsName | None:
    """Parse a weights or index file name (any prefix); ``None`` if it is neither."""
    m = _INDEX_RE.match(name)
    if m:
        fmt: Format = "safetensors" if m["ext"] == "safetensors" else "bin"
        return WeightsName(m["prefix"], m["variant"], fmt, is_index=True)
    m = _WEIGHTS_RE.match(name)
    if m is None:
        return None
    fmt = "safetensors" if m["ext"] == "safetensors" else "bin"
    i, n = (m["i1"], m["n1"]) if m["i1"] else (m["i2"], m["n2"])
    return WeightsName(m["prefix"], m["variant"], fmt, (int(i), int(n)) if i else None)


# -- sizes and shards ----------------------------------------------------------------------

_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-zA-Z]*)\s*$")


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string like ``"10GB"`` (decimal units, as the Hub uses) or ``"5MiB"``."""
    if isinstance(size, bool):
        raise ConfigError(f"max_shard_size={size!r}: expected a number of bytes or a string like '10GB'")
    if isinstance(size, int):
        if size <= 0:
            raise ConfigError(f"max_shard_size={size!r}: must be positive")
        return size
    m = _SIZE_RE.match(size) if isinstance(size, str) else None
    unit = m["unit"].upper() if m else ""
    if m is None or (unit and unit not in _UNITS):
        raise ConfigError(
            f"size {size!r} is not understood; use bytes or a number with a unit among "
            "B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
        )
    value = int(float(m["value"]) * _UNITS[unit or "B"])
    if value <= 0:
        raise ConfigError(f"size {size!r} must be positive")
    return value


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _storage_key(tensor: torch.Tensor) -> tuple[Any, ...] | None:
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return None
    storage = tensor.untyped_storage()
    return (tensor.device, storage.data_ptr(), storage.nbytes())


@dataclasses.dataclass
class ShardPlan:
    """Which keys go to which file; ``index()`` is the JSON Diffusers writes when sharded."""

    files: dict[str, list[str]]
    total_size: int
    index_name: str

    @property
    def is_sharded(self) -> bool:
        return len(self.files) > 1

    def weight_map(self) -> dict[str, str]:
        return {key: name for name, keys in self.files.items() for key in keys}

    def index(self) -> dict[str, Any]:
        return {"metadata": {"total_size": self.total_size}, "weight_map": dict(sorted(self.weight_map().items()))}


def plan_shards(
    state_dict: Mapping[str, torch.Tensor],
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    *,
    prefix: str = WEIGHTS_NAME,
    variant: str | None = None,
    safetensors: bool = True,
) -> ShardPlan:
    """Split keys into shards, greedily in key order, the way the Hub and Diffusers do.

    A tensor larger than the limit gets a shard of its own; tensors sharing storage go to the
    shard of the first of them (and count once toward the size).
    """
    limit = parse_size(max_shard_size)
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    total = 0
    first_of_storage: dict[tuple[Any, ...], str] = {}
    followers: dict[str, list[str]] = {}
    for key, tensor in state_dict.items():
        sid = _storage_key(tensor)
        if sid is not None:
            if sid in first_of_storage:
                followers[first_of_storage[sid]].append(key)
                continue
            first_of_storage[sid] = key
            followers[key] = []
        size = _nbytes(tensor)
        total += size
        if size > limit:
            shards.append([key])
            continue
        if current and current_size + size > limit:
            shards.append(current)
            current, current_size = [], 0
        current.append(key)
        current_size += size
    if current or not shards:
        shards.append(current)
    for shard in shards:
        shard.extend([f for key in list(shard) for f in followers.get(key, ())])
    count = len(shards)
    files = {
        weights_file_name(
            prefix, variant=variant, safetensors=safetensors, shard=None if count == 1 else (i + 1, count)
        ): keys
        for i, keys in enumerate(shards)
    }
    return ShardPlan(files, total, index_file_name(prefix, variant=variant, safetensors=safetensors))


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    folder: str | os.PathLike[str],
    *,
    prefix: str = WEIGHTS_NAME,
    variant: str | None = None,
    safe_serialization: bool = True,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> list[Path]:
    """Write ``state_dict`` into ``folder`` (which must exist) as Diffusers does; returns the files written.

    Tensors that share storage are written as separate copies (safetensors refuses aliases).
    Call this inside :func:`atomic_folder` so a failure leaves the previous folder untouched.
    """
    folder = Path(folder)
    plan = plan_shards(state_dict, max_shard_size, prefix=prefix, variant=variant, safetensors=safe_serialization)
    written: list[Path] = []
    for name, keys in plan.files.items():
        seen: set[tuple[Any, ...]] = set()
        shard: dict[str, torch.Tensor] = {}
        for key in keys:
            tensor = state_dict[key].detach()
            sid = _storage_key(tensor)
            if sid is not None and sid in seen:
                tensor = tensor.clone()
            elif sid is not None:
                seen.add(sid)
            shard[key] = tensor.contiguous()
        path = folder / name
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(shard, str(path), metadata={"format": "pt"})
        else:
            torch.save(shard, path)
        written.append(path)
    if plan.is_sharded:
        index_path = folder / plan.index_name
        index_path.write_text(json.dumps(plan.index(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(index_path)
    return written


# -- reading -------------------------------------------------------------------------------


@dataclasses.dataclass
class WeightFiles:
    """The weight files of one component, as found by :func:`find_weight_files`."""

    folder: Path
    files: list[Path]
    format: Format
    index: Path | None = None

    def describe(self) -> str:
        return str(self.index) if self.index is not None else ", ".join(str(f) for f in self.files)


def _variant_label(variant: str | None) -> str:
    return "no variant" if variant is None else repr(variant)


def _safe_entry(folder: Path, index: Path, entry: Any, key: str) -> Path:
    """The file an index entry names, refused unless it is a relative path inside ``folder``."""
    if not isinstance(entry, str) or not entry:
        raise LoadError(f"{index}: weight_map[{key!r}] = {entry!r} is not a file name")
    posix = PurePosixPath(entry.replace("\\", "/"))
    if posix.is_absolute() or entry.startswith(("/", "\\")) or re.match(r"^[a-zA-Z]:", entry) or ".." in posix.parts:
        raise LoadError(
            f"{index}: weight_map[{key!r}] = {entry!r} points outside the folder {folder}; "
            "an index may only name files inside its own folder"
        )
    return folder.joinpath(*posix.parts)


def _read_index(folder: Path, index: Path) -> list[Path]:
    try:
        data = read_json(index, "weights index")
    except ConfigError as exc:
        raise LoadError(str(exc)) from None
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise LoadError(f"{index}: expected a non-empty 'weight_map' object mapping tensor keys to file names")
    files: dict[Path, None] = {}
    for key, entry in weight_map.items():
        files[_safe_entry(folder, index, entry, key)] = None
    for path in files:
        if not os.path.lexists(path):
            raise LoadError(f"{index}: names the shard {path.name}, which is not in {folder}")
    return list(files)


def _find_format(folder: Path, prefix: str, variant: str | None, fmt: Format) -> WeightFiles | None:
    index = folder / index_file_name(prefix, variant=variant, safetensors=fmt == "safetensors")
    if os.path.lexists(index):  # not is_file(): a FIFO or a folder in its place is refused, not skipped
        return WeightFiles(folder, _read_index(folder, index), fmt, index)
    single = folder / weights_file_name(prefix, variant=variant, safetensors=fmt == "safetensors")
    if os.path.lexists(single):
        return WeightFiles(folder, [single], fmt)
    return None


def _regular(found: WeightFiles) -> WeightFiles:
    """``found``, once every file in it is known to be a regular file (whoever opens them next)."""
    for path in found.files:
        check_regular_file(path, "weights", error=LoadError)
    return found


def find_weight_files(
    folder: str | os.PathLike[str],
    *,
    prefix: str = WEIGHTS_NAME,
    variant: str | None = None,
    use_safetensors: bool | None = None,
) -> WeightFiles:
    """Find the weight files of ``folder`` for a variant, preferring safetensors.

    ``use_safetensors``: ``None`` or ``True`` read safetensors only (the error says how to opt in
    to ``.bin``); ``False`` also allows pickled ``.bin`` files when there is no safetensors file.
    Sharded checkpoints are found through their index, whose entries must stay inside ``folder``.
    Every file returned is a regular file (a FIFO or a device in its place is a :class:`LoadError`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LoadError(f"{folder}: no such folder")
    found = _find_format(folder, prefix, variant, "safetensors")
    if found is not None:
        return _regular(found)
    pickled = _find_format(folder, prefix, variant, "bin")
    if pickled is not None:
        if use_safetensors is False:
            return _regular(pickled)
        if use_safetensors is None:
            raise LoadError(
                f"{folder}: holds only pickled weights ({pickled.describe()}); difflux does not read "
                "pickle files unless asked: pass use_safetensors=False to load them (with "
                "torch.load(weights_only=True)), or convert them to safetensors"
            )
        raise LoadError(f"{folder}: use_safetensors=True, but there are only pickled weights ({pickled.describe()})")
    variants: dict[str | None, set[str]] = {}
    for child in sorted(folder.iterdir()):
        parsed = parse_weights_name(child.name)
        if parsed is not None and parsed.prefix == prefix:
            variants.setdefault(parsed.variant, set()).add(parsed.format)
    wanted = weights_file_name(prefix, variant=variant)
    if not variants:
        raise LoadError(f"{folder}: no weights found (expected {wanted} or its sharded form with an index)")
    listing = ", ".join(
        f"{_variant_label(v)} ({'/'.join(sorted(fmts))})"
        for v, fmts in sorted(variants.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))
    )
    hint = (
        "pass variant=None to load the default weights"
        if None in variants
        else f"pass variant={sorted(v for v in variants if v is not None)[0]!r}"
    )
    what = "without a variant" if variant is None else f"for variant {variant!r}"
    raise LoadError(f"{folder}: no weights {what} (expected {wanted}); the folder has weights for: {listing}; {hint}")


def load_weights_file(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read every tensor of one ``.safetensors`` or ``.bin`` file onto ``device``.

    ``.bin`` files are read with ``torch.load(weights_only=True)``; a damaged file is a
    :class:`LoadError` naming it.
    """
    path = Path(path)
    device = torch.device(device)
    check_regular_file(path, "weights", error=LoadError)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            out: dict[str, torch.Tensor] = {}
            with safe_open(str(path), framework="pt", device=str(device)) as fh:
                for key in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    out[key] = fh.get_tensor(key)
            return out
        except FileNotFoundError:
            raise LoadError(f"{path}: file not found") from None
        except Exception as exc:
            raise LoadError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise LoadError(f"{path}: file not found") from None
    except Exception as exc:
        raise LoadError(
            f"{path}: could not be read as a weights-only pickle (truncated, corrupt or unsafe?): {exc}"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise LoadError(f"{path}: expected a dict of tensors, found {type(data).__name__}")
    return data


def iter_weight_shards(
    weights: WeightFiles, device: str | torch.device = "cpu"
) -> Iterator[tuple[Path, dict[str, torch.Tensor]]]:
    """Yield ``(file, tensors)`` one file at a time, so only one shard is in memory besides the model."""
    for path in weights.files:
        yield path, load_weights_file(path, device)


# -- atomic writing ------------------------------------------------------------------------


def _link_or_copy(src: str, dst: str) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _families(folder: Path) -> set[tuple[str, str | None, Format]]:
    out = set()
    for child in folder.iterdir():
        parsed = parse_weights_name(child.name)
        if parsed is not None and child.is_file():
            out.add(parsed.family)
    return out


def _carry_over(old: Path, new: Path, rel: PurePosixPath, discard: Callable[[PurePosixPath], bool] | None) -> None:
    """Bring the old folder's files that the new save did not replace into ``new`` (as hard links)."""
    written = _families(new)
    for entry in os.scandir(old):
        src = Path(entry.path)
        dst = new / entry.name
        path = rel / entry.name
        if discard is not None and discard(path):
            continue
        if entry.is_dir(follow_symlinks=False):
            if dst.is_dir() and not dst.is_symlink():
                _carry_over(src, dst, path, discard)
            elif not os.path.lexists(dst):
                shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
            continue
        if os.path.lexists(dst):
            continue  # replaced by the new save
        parsed = parse_weights_name(entry.name)
        if parsed is not None and parsed.family in written:
            continue  # a stale single file, shard or index of weights the new save rewrote
        _link_or_copy(entry.path, str(dst))


def _remove_tree(folder: Path) -> list[str]:
    """Remove ``folder``; return what could not be removed (``"path: error"``), never raising."""
    problems: list[str] = []

    def note(_func: Any, path: str, exc: Any) -> None:
        err = exc[1] if isinstance(exc, tuple) else exc
        problems.append(f"{path}: {getattr(err, 'strerror', None) or err}")

    if sys.version_info >= (3, 12):
        shutil.rmtree(folder, onexc=note)
    else:
        shutil.rmtree(folder, onerror=note)
    return problems


def _report_leftover(folder: Path, problems: list[str], why: str) -> None:
    shown = "; ".join(problems[:3]) + (f" … and {len(problems) - 3} more" if len(problems) > 3 else "")
    message = f"{folder}: {why}, but it could not all be removed ({shown}); delete it by hand"
    logger.warning("%s", message)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _may_write(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def check_replaceable(target: Path) -> None:
    """Refuse, before anything is written, to save a folder at ``target`` that the user may not replace.

    :raises PermissionError: the nearest existing parent is not writable, ``target`` is a folder
        the user may not write or read (it is replaced as a whole), or it sits in a sticky folder
        (``/tmp``) and belongs to someone else.
    :raises NotADirectoryError: ``target`` or a parent is a file.
    """
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a folder; cannot save a folder there")
    existing = target.parent
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing}: is not a folder, so {target} cannot be created under it")
    if not _may_write(existing):
        raise PermissionError(f"{target}: cannot save here: you may not write in {existing}")
    if not target.is_dir():
        return
    if not _may_write(target) or not os.access(target, os.R_OK):
        raise PermissionError(
            f"{target}: this folder is not writable (or not readable) for you, and saving replaces it as a "
            "whole; make it writable (chmod u+rwx) or save somewhere else"
        )
    parent = os.stat(target.parent)
    geteuid = getattr(os, "geteuid", None)
    if geteuid is not None and parent.st_mode & stat.S_ISVTX:
        me = geteuid()
        if me != 0 and me != parent.st_uid and me != os.stat(target).st_uid:
            raise PermissionError(
                f"{target}: belongs to another user in the sticky folder {target.parent}, so it cannot be "
                "replaced; save somewhere else"
            )


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    missing: list[Path] = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
    return missing


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike[str],
    *,
    keep_existing: bool = True,
    discard: Callable[[PurePosixPath], bool] | None = None,
) -> Iterator[Path]:
    """Write a folder all at once: ``with atomic_folder(path) as tmp: ...write into tmp...``.

    Everything is written into a temporary sibling folder, which replaces ``path`` only when the
    block ends without an error; on an error the temporary folder is removed and ``path`` is left
    exactly as it was. With ``keep_existing`` (the default) files of the old folder that the new
    save did not write are kept (hard-linked, not copied), except stale weights: an old single
    file, shard or index of the same prefix, variant and format as weights the save wrote in the
    same folder (so a model re-saved with fewer or no shards leaves no shards behind). ``discard``
    may drop more old entries; it gets paths relative to ``path``. Nested use is fine (a
    pipeline's components each save into a subfolder of the pipeline's temporary folder).

    When ``path`` is a symlink, the folder it points to is the one replaced; the link stays.
    A folder the user may not replace is refused with ``PermissionError`` before anything is
    written (see :func:`check_replaceable`). If the old contents cannot all be removed after the
    swap, the save stands and a ``RuntimeWarning`` (also logged) names what was left behind.
    """
    target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    check_replaceable(target)
    parent = target.parent
    created = _make_parents(parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    try:
        if target.is_dir():
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
        yield tmp
        if target.is_dir():
            if keep_existing:
                _carry_over(target, tmp, PurePosixPath(), discard)
            backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
            os.rmdir(backup)
            os.rename(target, backup)
            try:
                os.rename(tmp, target)
            except BaseException:
                os.rename(backup, target)
                raise
            problems = _remove_tree(backup)
            if problems:
                _report_leftover(backup, problems, f"the previous contents of {target} were moved here after saving")
        else:
            os.rename(tmp, target)
    except BaseException:
        problems = _remove_tree(tmp) if os.path.lexists(tmp) else []
        if problems:
            _report_leftover(tmp, problems, "this half-written folder was to be removed after the save failed")
        for folder in created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
