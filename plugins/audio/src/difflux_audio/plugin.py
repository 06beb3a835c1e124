"""Entry point of the audio plugin: registers its pipelines and models lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_audio"

#: every model / component class the plugin provides, as a lazy reference
MODELS: tuple[str, ...] = (
    f"{_PKG}.modeling_audioldm2:AudioLDM2UNet2DConditionModel",
    f"{_PKG}.modeling_audioldm2:AudioLDM2ProjectionModel",
    f"{_PKG}.spectrogram_diffusion:T5FilmDecoder",
    f"{_PKG}.spectrogram_diffusion:OnnxRuntimeModel",
)

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_audioldm:AudioLDMPipeline",
    f"{_PKG}.pipeline_audioldm:MusicLDMPipeline",
    f"{_PKG}.pipeline_audioldm2:AudioLDM2Pipeline",
    f"{_PKG}.audio_diffusion:AudioDiffusionPipeline",
    f"{_PKG}.spectrogram_diffusion:SpectrogramDiffusionPipeline",
)

#: components Diffusers writes under its pipeline module's name in ``model_index.json``: ref -> library
PIPELINE_MODULE_COMPONENTS: dict[str, str] = {
    f"{_PKG}.modeling_audioldm2:AudioLDM2UNet2DConditionModel": "audioldm2",
    f"{_PKG}.modeling_audioldm2:AudioLDM2ProjectionModel": "audioldm2",
    f"{_PKG}.audio_diffusion:Mel": "audio_diffusion",
    f"{_PKG}.spectrogram_diffusion:SpectrogramNotesEncoder": "spectrogram_diffusion",
    f"{_PKG}.spectrogram_diffusion:SpectrogramContEncoder": "spectrogram_diffusion",
    f"{_PKG}.spectrogram_diffusion:OnnxRuntimeModel": "onnx_utils",
}


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    """Register the models under their Diffusers class names (library ``"diffusers"``), and those Diffusers
    writes in ``model_index.json`` under its pipeline module's name (``"audioldm2"``, ``"audio_diffusion"``)
    under that library too."""
    for ref in MODELS:
        register(ref)
    for ref, library in PIPELINE_MODULE_COMPONENTS.items():
        if ref not in MODELS:
            register(ref)
        register(ref, library=library)
