"""Entry point of the models plugin: registers every model class lazily (importing this module imports no torch)."""

from __future__ import annotations

from difflux import hookimpl
from difflux.registry import RegisterComponent

#: ``(lazy reference, Diffusers class name)`` of every model this plugin provides.
MODELS: tuple[str, ...] = (
    "difflux_models.unet_2d_condition:UNet2DConditionModel",
    "difflux_models.unet_2d:UNet2DModel",
    "difflux_models.autoencoder_kl:AutoencoderKL",
    "difflux_models.vq_model:VQModel",
    "difflux_models.unet_1d:UNet1DModel",
    "difflux_models.transformers.dit:DiTTransformer2DModel",
    "difflux_models.transformers.pixart:PixArtTransformer2DModel",
    "difflux_models.transformers.transformer_2d:Transformer2DModel",
    "difflux_models.transformers.prior_transformer:PriorTransformer",
    "difflux_models.unclip_text_proj:UnCLIPTextProjModel",
    "difflux_models.unet_kandinsky3:Kandinsky3UNet",
)


@hookimpl
def difflux_register_components(register: RegisterComponent) -> None:
    """Register the models under their Diffusers class names (library ``"diffusers"``)."""
    for ref in MODELS:
        register(ref)
    # GLIGEN's image projection: model_index.json names it ["stable_diffusion", "CLIPImageProjection"]
    register("difflux_models.clip_image_projection:CLIPImageProjection", library="stable_diffusion")
