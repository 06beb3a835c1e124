"""Entry point of the kandinsky plugin: registers its pipelines lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_kandinsky"

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_kandinsky2_2:KandinskyV22Pipeline",
    f"{_PKG}.pipeline_kandinsky2_2:KandinskyV22Img2ImgPipeline",
    f"{_PKG}.pipeline_kandinsky2_2:KandinskyV22InpaintPipeline",
    f"{_PKG}.pipeline_kandinsky2_2:KandinskyV22ControlnetPipeline",
    f"{_PKG}.pipeline_kandinsky2_2:KandinskyV22ControlnetImg2ImgPipeline",
    f"{_PKG}.pipeline_kandinsky2_2_prior:KandinskyV22PriorPipeline",
    f"{_PKG}.pipeline_kandinsky3:Kandinsky3Pipeline",
    f"{_PKG}.pipeline_kandinsky3:Kandinsky3Img2ImgPipeline",
    f"{_PKG}.pipeline_kandinsky:KandinskyPipeline",
    f"{_PKG}.pipeline_kandinsky:KandinskyImg2ImgPipeline",
    f"{_PKG}.pipeline_kandinsky:KandinskyInpaintPipeline",
    f"{_PKG}.pipeline_kandinsky:KandinskyPriorPipeline",
    f"{_PKG}.pipeline_kandinsky_combined:KandinskyCombinedPipeline",
    f"{_PKG}.pipeline_kandinsky_combined:KandinskyImg2ImgCombinedPipeline",
    f"{_PKG}.pipeline_kandinsky_combined:KandinskyInpaintCombinedPipeline",
    f"{_PKG}.pipeline_kandinsky2_2_prior:KandinskyV22PriorEmb2EmbPipeline",
    f"{_PKG}.pipeline_kandinsky2_2_combined:KandinskyV22CombinedPipeline",
    f"{_PKG}.pipeline_kandinsky2_2_combined:KandinskyV22Img2ImgCombinedPipeline",
    f"{_PKG}.pipeline_kandinsky2_2_combined:KandinskyV22InpaintCombinedPipeline",
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    # Diffusers writes Kandinsky 2.1's text encoder as ["kandinsky", "MultilingualCLIP"]
    register(f"{_PKG}.text_encoder:MultilingualCLIP", library="kandinsky")
