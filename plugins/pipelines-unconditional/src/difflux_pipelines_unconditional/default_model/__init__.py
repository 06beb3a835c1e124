"""The embedded default model: a small class-conditional DDIM pipeline for 16x16 handwritten digits.

Trained on scikit-learn's digits by ``examples/train_digits.py``; ``difflux generate`` with no
model argument loads it from here.
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

__all__ = ["DEFAULT_MODEL_NAME", "default_model_path"]

#: What ``difflux generate`` and ``difflux info`` call the embedded model.
DEFAULT_MODEL_NAME = "digits"


def default_model_path() -> Path:
    """The folder of the embedded pipeline (``model_index.json``, ``unet/``, ``scheduler/``)."""
    resource = files(__name__).joinpath(DEFAULT_MODEL_NAME)
    with as_file(resource) as path:  # an installed wheel is a real folder; zip imports are extracted
        folder = Path(path)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the embedded digits model is missing from {folder}; reinstall difflux-pipelines-unconditional, "
            "or train it with examples/train_digits.py"
        )
    return folder
