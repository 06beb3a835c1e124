"""Reading files that come with a checkpoint, safely: regular files only, bounded in size.

Every JSON file difflux reads (``config.json``, ``scheduler_config.json``, ``model_index.json``,
``*.safetensors.index.json`` ...) goes through :func:`read_json`; weight files and custom code
are checked with :func:`check_regular_file` before they are opened. A checkpoint folder is
untrusted input: a FIFO named ``config.json`` must not hang a load, a symlink to ``/dev/zero``
must not read until memory runs out, and a broken file must give an error that names it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import ConfigError, DiffluxError

__all__ = ["MAX_JSON_BYTES_ENV", "check_regular_file", "max_json_bytes", "read_json"]

#: Environment variable: the largest JSON file difflux reads, in bytes (default 64 MiB).
MAX_JSON_BYTES_ENV = "DIFFLUX_MAX_JSON_BYTES"
_DEFAULT_MAX_JSON_BYTES = 64 * 2**20
#: The deepest nesting of arrays and objects a JSON file may have (Diffusers' files nest 3 deep).
MAX_JSON_DEPTH = 64

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def max_json_bytes() -> int:
    """The size limit of JSON files: ``DIFFLUX_MAX_JSON_BYTES``, else 64 MiB."""
    raw = os.environ.get(MAX_JSON_BYTES_ENV, "").strip()
    if not raw:
        return _DEFAULT_MAX_JSON_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{MAX_JSON_BYTES_ENV}={raw!r}: expected a positive number of bytes")
    return value


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def check_regular_file(
    path: str | os.PathLike[str], what: str = "file", error: type[DiffluxError] = ConfigError
) -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed) if it is a regular file; else raise ``error``.

    Nothing is opened, so a FIFO cannot block and a device cannot be read. ``what`` names the
    file's role in the message (``"config"``, ``"weights"``).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        dangling = f" (a link to {os.readlink(path)}, which leads nowhere)" if os.path.islink(path) else ""
        raise error(f"{path}: {what} file not found{dangling}") from None
    except OSError as exc:
        raise error(f"{path}: the {what} file cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        real = os.path.realpath(path)
        via = f" (a link to {real})" if real != os.path.abspath(path) else ""
        raise error(
            f"{path}{via} is {_kind(st.st_mode)}, not a regular file; difflux reads a {what} file only "
            "from a regular file: replace it with the real file"
        )
    return st


def _too_deep(data: Any) -> bool:
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > MAX_JSON_DEPTH:
                    return True
                stack.append((child, depth + 1))
    return False


def read_json(path: str | os.PathLike[str], what: str = "JSON") -> dict[str, Any]:
    """Read a JSON object from the regular file ``path``; every problem is a :class:`ConfigError` naming it.

    Refused: anything but a regular file (after following symlinks), files over
    :func:`max_json_bytes`, bytes that are not UTF-8, invalid JSON (with line and column),
    nesting deeper than ``MAX_JSON_DEPTH``, and a top level that is not an object.
    """
    path = Path(path)
    limit = max_json_bytes()
    check_regular_file(path, what)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ConfigError(f"{path}: the {what} file cannot be read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)  # the file opened may not be the one checked, if it was swapped meanwhile
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is {_kind(st.st_mode)}, not a regular file; refusing to read it")
        if st.st_size > limit:
            raise _too_large(path, what, limit)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(f"{path}: the {what} file cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > limit:
        raise _too_large(path, what, limit)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: the {what} file is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "JSON files must be UTF-8"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise ConfigError(f"{path}: the JSON is nested too deeply to read") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level, found {type(data).__name__}")
    if _too_deep(data):
        raise ConfigError(f"{path}: the JSON nests arrays/objects more than {MAX_JSON_DEPTH} deep")
    return data


def _too_large(path: Path, what: str, limit: int) -> ConfigError:
    return ConfigError(
        f"{path}: the {what} file is larger than {limit} bytes, the limit for JSON files; "
        f"raise {MAX_JSON_BYTES_ENV} if the file is genuine"
    )
