"""The optional extras of ``difflux-audio``, imported only when a feature needs them.

``librosa`` (Audio Diffusion's :class:`~difflux_audio.audio_diffusion.Mel`, resampling for CLAP
ranking), ``note_seq`` (the ``[midi]`` extra: MIDI input of Spectrogram Diffusion), ``onnxruntime``
(Spectrogram Diffusion's MelGAN stage) and ``soundfile``. A missing one
is a :class:`MissingExtraError` that names the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from difflux.errors import DiffluxError

__all__ = ["EXTRAS", "MissingExtraError", "has_extra", "require"]

#: import name -> the ``difflux-audio`` extra that installs it
EXTRAS: dict[str, str] = {
    "librosa": "librosa",
    "note_seq": "midi",
    "onnxruntime": "onnxruntime",
    "soundfile": "soundfile",
}


class MissingExtraError(DiffluxError, ImportError):
    """An optional dependency of ``difflux-audio`` is not installed; the message names the extra."""


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` (one of :data:`EXTRAS`) for ``what`` (the feature that needs it).

    :raises MissingExtraError: when it is not installed: ``what needs the 'librosa' package, the
        [librosa] extra of difflux-audio: pip install "difflux-audio[librosa]"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = EXTRAS[module]
        raise MissingExtraError(
            f"{what} needs the {module!r} package, the [{extra}] extra of difflux-audio: "
            f'pip install "difflux-audio[{extra}]"'
        ) from exc


def has_extra(module: str) -> bool:
    """Whether ``module`` can be imported (without raising)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
