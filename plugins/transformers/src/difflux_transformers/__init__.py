"""difflux plugin: loads ``["transformers", ClassName]`` components named in ``model_index.json``.

Importing this package imports neither ``transformers`` nor ``torch``; the bridge module does,
on the first component it loads.
"""

from __future__ import annotations

__all__ = ["LOADABLE_BASES", "RENAMED_CLASSES"]

#: The ``transformers`` base classes a component class must derive from to be loaded.
LOADABLE_BASES: tuple[str, ...] = (
    "PreTrainedModel",
    "PreTrainedTokenizerBase",
    "ProcessorMixin",
    "ImageProcessingMixin",
    "FeatureExtractionMixin",
)

#: Class names that old checkpoints write and ``transformers`` has since renamed.
RENAMED_CLASSES: dict[str, str] = {"CLIPFeatureExtractor": "CLIPImageProcessor"}
