"""difflux-audio: AudioLDM, MusicLDM, AudioLDM2, Audio Diffusion and Spectrogram Diffusion.

Pipelines load from Diffusers-format folders through ``difflux.DiffusionPipeline.from_pretrained``;
they are importable here too (lazily, so importing this package imports no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AudioDiffusionPipeline",
    "AudioLDM2Pipeline",
    "AudioLDM2ProjectionModel",
    "AudioLDM2UNet2DConditionModel",
    "AudioLDMPipeline",
    "Mel",
    "MidiProcessor",
    "MusicLDMPipeline",
    "OnnxRuntimeModel",
    "SpectrogramContEncoder",
    "SpectrogramDiffusionPipeline",
    "SpectrogramNotesEncoder",
    "T5FilmDecoder",
]

_WHERE = {
    "AudioLDMPipeline": "difflux_audio.pipeline_audioldm",
    "MusicLDMPipeline": "difflux_audio.pipeline_audioldm",
    "AudioLDM2Pipeline": "difflux_audio.pipeline_audioldm2",
    "AudioDiffusionPipeline": "difflux_audio.audio_diffusion",
    "Mel": "difflux_audio.audio_diffusion",
    "MidiProcessor": "difflux_audio.midi",
    **{
        name: "difflux_audio.spectrogram_diffusion"
        for name in (
            "OnnxRuntimeModel", "SpectrogramContEncoder", "SpectrogramDiffusionPipeline", "SpectrogramNotesEncoder",
            "T5FilmDecoder",
        )
    },
    "AudioLDM2ProjectionModel": "difflux_audio.modeling_audioldm2",
    "AudioLDM2UNet2DConditionModel": "difflux_audio.modeling_audioldm2",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'difflux_audio' has no attribute {name!r}")
