"""Entry point of the controlnet plugin: registers its models and pipelines lazily (imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent, RegisterPipeline

_PKG = "difflux_controlnet"

#: every model class the plugin provides, as a lazy reference
MODELS: tuple[str, ...] = (
    f"{_PKG}.controlnet:ControlNetModel",
    f"{_PKG}.multicontrolnet:MultiControlNetModel",
    f"{_PKG}.controlnet_union:ControlNetUnionModel",
    f"{_PKG}.controlnet_union:MultiControlNetUnionModel",
    f"{_PKG}.t2i_adapter:T2IAdapter",
    f"{_PKG}.multiadapter:MultiAdapter",
    f"{_PKG}.controlnet_xs:ControlNetXSAdapter",
    f"{_PKG}.controlnet_xs:UNetControlNetXSModel",
)

#: every pipeline class the plugin provides, as a lazy reference
PIPELINES: tuple[str, ...] = (
    f"{_PKG}.pipeline_controlnet:StableDiffusionControlNetPipeline",
    f"{_PKG}.pipeline_controlnet:StableDiffusionControlNetImg2ImgPipeline",
    f"{_PKG}.pipeline_controlnet_inpaint:StableDiffusionControlNetInpaintPipeline",
    f"{_PKG}.pipeline_controlnet_sd_xl:StableDiffusionXLControlNetPipeline",
    f"{_PKG}.pipeline_controlnet_sd_xl:StableDiffusionXLControlNetImg2ImgPipeline",
    f"{_PKG}.pipeline_controlnet_sd_xl:StableDiffusionXLControlNetInpaintPipeline",
    f"{_PKG}.pipeline_controlnet_union_sd_xl:StableDiffusionXLControlNetUnionPipeline",
    f"{_PKG}.pipeline_controlnet_union_sd_xl:StableDiffusionXLControlNetUnionImg2ImgPipeline",
    f"{_PKG}.pipeline_controlnet_union_sd_xl:StableDiffusionXLControlNetUnionInpaintPipeline",
    f"{_PKG}.pipeline_adapter:StableDiffusionAdapterPipeline",
    f"{_PKG}.pipeline_adapter_sd_xl:StableDiffusionXLAdapterPipeline",
    f"{_PKG}.pipeline_controlnet_xs:StableDiffusionControlNetXSPipeline",
    f"{_PKG}.pipeline_controlnet_xs_sd_xl:StableDiffusionXLControlNetXSPipeline",
)


@hookimpl
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    for ref in PIPELINES:
        register(ref)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    """Register the models under their Diffusers class names (library ``"diffusers"``)."""
    for ref in MODELS:
        register(ref)
