"""Custom pipelines and components: code runs only with ``trust_remote_code=True``.

Every path that imports code goes through :func:`check_allowed` first, before the code is
downloaded, read or imported: a pipeline ``_class_name`` of ``[module, Class]``, a custom
component ``<component>/<module>.py``, and ``custom_pipeline=`` naming a repo, a local ``.py``
file or a local folder. Only installed distributions run without consent.
``DIFFLUX_DISABLE_REMOTE_CODE=1`` refuses all of them, whatever the argument.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

from difflux._files import check_regular_file
from difflux.errors import LoadError, RemoteCodeError
from difflux.options import DISABLE_REMOTE_CODE_ENV, LoadOptions, require_trust

from ._download import looks_like_repo_id
from ._select import check_plain_name

__all__ = [
    "DISABLE_ENV",
    "RemoteCodeError",
    "check_allowed",
    "import_file",
    "load_custom_component",
    "load_pipeline_class",
]

logger = logging.getLogger("difflux.hub")

#: Set to ``1`` to refuse custom code even with ``trust_remote_code=True`` (defined by the core).
DISABLE_ENV = DISABLE_REMOTE_CODE_ENV
CUSTOM_PIPELINE_FILE = "pipeline.py"


def check_allowed(what: str, options: LoadOptions) -> None:
    """Raise :class:`RemoteCodeError` unless custom code may run here (see :func:`difflux.options.require_trust`)."""
    require_trust(what, options)


def import_file(path: Path) -> types.ModuleType:
    """Import a ``.py`` file as a module of its own (named after its path and content hash)."""
    check_regular_file(path, "Python code", error=LoadError)
    data = path.read_bytes()
    digest = hashlib.sha256(str(path.resolve()).encode() + b"\0" + data).hexdigest()[:16]
    name = f"_difflux_remote_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise LoadError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _pipeline_base() -> type:
    from difflux.pipeline import DiffusionPipeline

    return DiffusionPipeline


def _pick_class(module: types.ModuleType, wanted: str | None, source: Path) -> type:
    base = _pipeline_base()
    if wanted is not None:
        found = getattr(module, wanted, None)
        if isinstance(found, type) and issubclass(found, base):
            return found
    own = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, base) and obj is not base and obj.__module__ == module.__name__
    ]
    if len(own) == 1:
        return own[0]
    names = ", ".join(sorted(c.__name__ for c in own)) or "none"
    raise LoadError(
        f"{source}: expected one DiffusionPipeline subclass"
        + (f" named {wanted!r}" if wanted else "")
        + f"; it defines: {names}"
    )


def _in_hf_cache(path: Path, options: LoadOptions) -> bool:
    from huggingface_hub import constants

    roots = [Path(constants.HF_HUB_CACHE)]
    if options.cache_dir is not None:
        roots.append(Path(options.cache_dir))
    resolved = path.resolve()
    return any(resolved.is_relative_to(root.expanduser().resolve()) for root in roots)


def _download_pipeline_code(repo_id: str, options: LoadOptions) -> Path:
    import httpx2
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    from ._download import _hub_error

    revision = options.custom_revision or "main"
    try:
        file = hf_hub_download(
            repo_id,
            CUSTOM_PIPELINE_FILE,
            revision=revision,
            cache_dir=os.fspath(options.cache_dir) if options.cache_dir is not None else None,
            token=options.token,
            local_files_only=options.local_files_only,
            force_download=options.force_download,
        )
    except (HfHubHTTPError, httpx2.HTTPError, OSError, ValueError) as exc:
        raise _hub_error(repo_id, options.replace(revision=revision), exc) from exc
    path = Path(file)
    logger.info("custom pipeline %s: %s at commit %s", repo_id, CUSTOM_PIPELINE_FILE, path.parent.name)
    return path


def load_pipeline_class(folder: Path, index: dict[str, Any], options: LoadOptions) -> type | None:
    """The pipeline class that custom code defines (see :mod:`difflux_hub._remote_code`)."""
    class_name = index.get("_class_name")
    wanted: str | None = None
    if isinstance(class_name, list):
        if len(class_name) != 2 or not all(isinstance(v, str) for v in class_name):
            raise LoadError(f"{folder / 'model_index.json'}: '_class_name' must be a name or [module, ClassName]")
        wanted = class_name[1]
    elif isinstance(class_name, str):
        wanted = class_name
    custom = options.custom_pipeline
    if custom is None:
        assert isinstance(class_name, list)
        module = check_plain_name(f"{class_name[0]}.py", f"{folder / 'model_index.json'}: _class_name")
        code = folder / module
        if not os.path.lexists(code):
            raise LoadError(f"{folder / 'model_index.json'}: '_class_name' names {module}, which is not in {folder}")
        check_allowed(f"{code} (named by '_class_name' in model_index.json)", options)
        return _pick_class(import_file(code), wanted, code)
    path = Path(custom).expanduser()
    if path.is_dir():
        path = path / CUSTOM_PIPELINE_FILE
        if not os.path.lexists(path):
            raise LoadError(f"custom_pipeline={custom!r}: the folder has no {CUSTOM_PIPELINE_FILE}")
    if os.path.lexists(path):
        if path.suffix != ".py":
            raise LoadError(f"custom_pipeline={custom!r}: not a .py file or a folder with {CUSTOM_PIPELINE_FILE}")
        where = "a file in the Hugging Face cache" if _in_hf_cache(path, options) else "a local file"
        check_allowed(f"custom_pipeline={custom!r} ({where})", options)
        return _pick_class(import_file(path), None, path)
    if not looks_like_repo_id(custom):
        raise LoadError(
            f"custom_pipeline={custom!r}: not a .py file, a folder with {CUSTOM_PIPELINE_FILE}, or a repo id"
        )
    check_allowed(f"custom_pipeline={custom!r} ({CUSTOM_PIPELINE_FILE} of that repo)", options)
    code = _download_pipeline_code(custom, options)
    return _pick_class(import_file(code), None, code)


def load_custom_component(library: str, class_name: str, folder: Path, options: LoadOptions) -> Any:
    """Load a component whose class is defined in ``<component folder>/<library>.py``; ``None`` if absent."""
    module_file = check_plain_name(f"{library}.py", f"{folder}: component library")
    code = folder / module_file
    if not os.path.lexists(code):
        return None
    check_allowed(f"{code} (custom component {folder.name!r})", options)
    module = import_file(code)
    klass = getattr(module, class_name, None)
    if not isinstance(klass, type):
        raise LoadError(f"{code}: defines no class {class_name!r} (named in model_index.json for {folder.name!r})")
    from difflux.modeling import ModelMixin
    from difflux.schedulers import SchedulerMixin

    if issubclass(klass, ModelMixin):
        loaded = klass._from_folder(folder, options, component=folder.name)
        return loaded[0] if isinstance(loaded, tuple) else loaded
    if issubclass(klass, SchedulerMixin):
        return klass.from_pretrained(folder)
    load = getattr(klass, "from_pretrained", None)
    if not callable(load):
        raise LoadError(f"{code}: {class_name} has no from_pretrained(folder) to load it with")
    return load(folder)
