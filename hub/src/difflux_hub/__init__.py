"""difflux-hub: the Hugging Face Hub for difflux.

Installed, it lets ``from_pretrained`` take repo ids (downloading only what the pipeline needs),
adds ``push_to_hub`` and ``DiffusionPipeline.download``, and loads custom pipelines and
components, only with ``trust_remote_code=True``. Importing it imports no ``huggingface_hub``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._remote_code import DISABLE_ENV, RemoteCodeError
    from ._select import Selection, select_folder, select_pipeline

__all__ = ["DISABLE_ENV", "RemoteCodeError", "Selection", "select_folder", "select_pipeline"]

# Loaded on first use, so that loading the plugin (``difflux.get_registry()``) imports no torch.
_LAZY = {
    "DISABLE_ENV": "._remote_code",
    "RemoteCodeError": "._remote_code",
    "Selection": "._select",
    "select_folder": "._select",
    "select_pipeline": "._select",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'difflux_hub' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)
