"""Resolve a repo id to a folder in the Hugging Face cache, downloading only what is needed.

Two ``snapshot_download`` calls, both through ``huggingface_hub``'s public API:

1. the small JSON files that say what the repo is (``model_index.json``, or the configs of the
   requested folder); this also resolves the revision to a commit and caches the repo's file
   listing (``get_cached_repo_tree``), so the listing is known offline as well;
2. the files :mod:`difflux_hub._select` picks from that listing, pinned to that commit.

In offline mode (``local_files_only=True`` or ``HF_HUB_OFFLINE=1``) the same two steps read the
cache only, and fail with an error naming the repo when it lacks a file.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import logging
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from difflux.config import read_json
from difflux.errors import ConfigError, LoadError
from difflux.options import LoadOptions

from ._select import INDEX_FILE, Selection, select_folder, select_pipeline

__all__ = ["download", "looks_like_repo_id"]

logger = logging.getLogger("difflux.hub")

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.\-]*/)?[A-Za-z0-9][\w.\-]*$")


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` can be a Hub repo id (``"name"`` or ``"org/name"``) rather than a path."""
    if not _REPO_ID.match(name) or "--" in name or ".." in name or name.endswith((".", "-")):
        return False
    return not Path(name).expanduser().exists()


def _exact(path: str) -> str:
    """An ``allow_patterns`` entry that matches exactly ``path``."""
    return glob.escape(path)


def _common_kwargs(options: LoadOptions) -> dict[str, Any]:
    return {
        "cache_dir": os.fspath(options.cache_dir) if options.cache_dir is not None else None,
        "token": options.token,
        "local_files_only": options.local_files_only,
        "force_download": options.force_download,
    }


@contextlib.contextmanager
def _proxies(proxies: Mapping[str, str] | None) -> Iterator[None]:
    """Route ``huggingface_hub``'s HTTP client through ``proxies`` (``{"http": url, "https": url}``) for a while.

    ``huggingface_hub`` has no per-call proxies since 1.0; its shared client is swapped and restored.
    """
    if not proxies:
        yield
        return
    import httpx2
    from huggingface_hub.utils import _http

    mounts = {f"{scheme}://": httpx2.HTTPTransport(proxy=url) for scheme, url in proxies.items() if url}

    def factory() -> httpx2.Client:
        return httpx2.Client(
            event_hooks={"request": [_http.hf_request_event_hook]}, follow_redirects=True, timeout=None, mounts=mounts
        )

    _http.set_client_factory(factory)
    try:
        yield
    finally:
        _http.set_client_factory(_http.default_client_factory)


def _hub_error(repo_id: str, options: LoadOptions, exc: Exception) -> LoadError:
    """A :class:`LoadError` that says which repo, which revision and what to do."""
    from huggingface_hub import errors as hf

    revision = options.revision or "main"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, hf.RevisionNotFoundError):
        return LoadError(f"{repo_id}: revision {revision!r} does not exist in this repo; check revision=")
    if isinstance(exc, hf.GatedRepoError):
        return LoadError(f"{repo_id}: the repo is gated; accept its terms on the Hub and pass token=")
    if isinstance(exc, hf.RepositoryNotFoundError):
        return LoadError(
            f"{repo_id}: no such repo on the Hub, or it is private and the token (token=, HF_TOKEN) "
            f"does not give access to it ({text})"
        )
    if isinstance(exc, hf.RemoteEntryNotFoundError):
        return LoadError(f"{repo_id} (revision {revision!r}): a file is missing from the repo: {text}")
    if isinstance(exc, hf.HfHubHTTPError) and exc.response is not None and exc.response.status_code == 401:
        return LoadError(f"{repo_id}: not authorized (HTTP 401); check the token passed as token= or in HF_TOKEN")
    if isinstance(exc, (hf.LocalEntryNotFoundError, hf.IncompleteSnapshotError)):
        return LoadError(
            f"{repo_id} (revision {revision!r}): the files are not all in the cache and the Hub cannot be "
            f"reached or offline mode is on (local_files_only=True or HF_HUB_OFFLINE=1): {text}"
        )
    return LoadError(f"{repo_id} (revision {revision!r}): download failed: {type(exc).__name__}: {text}")


def _listing(repo_id: str, snapshot: Path, commit: str, options: LoadOptions) -> list[str]:
    """Every file path of the repo at ``commit``: from the cached tree listing, else the Hub, else the folder."""
    from huggingface_hub import HfApi, get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    kwargs = _common_kwargs(options)
    try:
        return [f.path for f in get_cached_repo_tree(repo_id, revision=commit, cache_dir=kwargs["cache_dir"])]
    except CachedRepoTreeNotFoundError:
        pass
    from huggingface_hub.constants import is_offline_mode

    if not (options.local_files_only or is_offline_mode()):
        return list(HfApi().list_repo_files(repo_id, revision=commit, token=options.token))
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _read_index(snapshot: Path) -> dict[str, Any] | None:
    path = snapshot / INDEX_FILE
    if not os.path.lexists(path):
        return None
    return read_json(path, INDEX_FILE)


def select(repo_id: str, files: list[str], index: Mapping[str, Any] | None, options: LoadOptions) -> Selection:
    """The files ``from_pretrained`` needs, given the repo listing and its ``model_index.json``."""
    if options.subfolder or index is None:
        return select_folder(repo_id, files, options.subfolder, options)
    return select_pipeline(repo_id, files, index, options)


def download(repo_id: str, options: LoadOptions) -> Path:
    """Fetch what ``from_pretrained(repo_id, **options)`` needs; return the snapshot folder."""
    import httpx2
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    sub = (options.subfolder or "").strip("/")
    first = [f"{sub}/*.json"] if sub else [INDEX_FILE, "config.json", "scheduler_config.json"]
    kwargs = _common_kwargs(options)
    with _proxies(options.proxies):
        try:
            snapshot = Path(snapshot_download(repo_id, revision=options.revision, allow_patterns=first, **kwargs))
            commit = snapshot.name
            files = _listing(repo_id, snapshot, commit, options)
            selection = select(repo_id, files, None if sub else _read_index(snapshot), options)
            for warning in selection.warnings:
                logger.warning("%s", warning)
            if options.force_download:  # the first call already fetched these again
                done = {p for p in files if any(fnmatch.fnmatch(p, pattern) for pattern in first)}
            else:
                done = {p for p in selection.files if (snapshot / p).is_file()}
            rest = [_exact(p) for p in selection.files if p not in done]
            if rest:
                snapshot_download(repo_id, revision=commit, allow_patterns=rest, **kwargs)
        except (LoadError, ConfigError):
            raise
        except (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError) as exc:
            raise _hub_error(repo_id, options, exc) from exc
    missing = [p for p in selection.files if not (snapshot / p).is_file()]
    if missing:
        raise LoadError(f"{repo_id} (commit {commit}): files missing after download: {', '.join(missing)}")
    return snapshot
