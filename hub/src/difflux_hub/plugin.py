"""Entry point of the hub plugin: resolves repo ids, loads custom code (trust-gated), pushes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difflux import hookimpl
from difflux.options import LoadOptions


@hookimpl
def difflux_resolve_pretrained(name_or_path: str, options: LoadOptions) -> Path | None:
    """Download what ``from_pretrained`` needs of a repo id into the cache; ``None`` for local paths."""
    from ._download import download, looks_like_repo_id

    if not looks_like_repo_id(name_or_path):
        return None
    return download(name_or_path, options)


@hookimpl
def difflux_load_pipeline_class(folder: Path, index: dict[str, Any], options: LoadOptions) -> type | None:
    """Custom pipeline code, only with ``trust_remote_code=True`` when it comes from a repo."""
    from ._remote_code import load_pipeline_class

    return load_pipeline_class(folder, index, options)


@hookimpl
def difflux_load_component(library: str, class_name: str, folder: Path, options: LoadOptions) -> Any:
    """A custom component defined in ``<component>/<library>.py``, only with ``trust_remote_code=True``."""
    from ._remote_code import load_custom_component

    return load_custom_component(library, class_name, folder, options)


@hookimpl
def difflux_push_to_hub(obj: Any, repo_id: str, options: dict[str, Any]) -> Any:
    """Save ``obj`` and upload it to ``repo_id`` in one commit."""
    from ._push import push_to_hub

    return push_to_hub(obj, repo_id, options)
