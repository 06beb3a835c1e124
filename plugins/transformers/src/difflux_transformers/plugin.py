"""Entry point of the transformers plugin: the ``difflux_load_component`` hook for ``transformers`` entries.

Importing this module (which building the registry does) imports no ``transformers`` and no
``torch``: the bridge is imported when a ``["transformers", ClassName]`` component is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from difflux import LoadOptions, hookimpl

LIBRARY = "transformers"


@hookimpl
def difflux_load_component(library: str, class_name: str, folder: Path, options: LoadOptions) -> Any:
    """Load ``transformers.<class_name>`` from ``folder``; ``None`` for any other library."""
    if library != LIBRARY:
        return None
    from .bridge import load_component

    return load_component(class_name, folder, options)
