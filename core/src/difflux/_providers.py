"""Which first-party distribution provides each Diffusers class name.

Used only for error messages: when a checkpoint names a class that no installed plugin
registers, the error says what to ``pip install`` (or, when that distribution is installed but
left out by ``DIFFLUX_LOAD_PLUGINS``, says so).  ``core/tests/test_plugin_author.py`` checks it
both ways against what each installed first-party distribution registers: list a class here in
the same commit that registers it, and only then.
"""

from __future__ import annotations

__all__ = ["PROVIDERS", "install_hint"]

# fmt: off
_BY_DISTRIBUTION: dict[str, tuple[str, ...]] = {
    "difflux-schedulers": (
        "DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "PNDMScheduler",
        "LMSDiscreteScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
        "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler", "KarrasVeScheduler",
        "ScoreSdeVeScheduler", "CMStochasticIterativeScheduler", "FlowMatchEulerDiscreteScheduler",
        "EDMEulerScheduler", "UnCLIPScheduler", "DDPMWuerstchenScheduler",
        "DDPMParallelScheduler", "DDIMParallelScheduler",
        "VQDiffusionScheduler",
    ),
    "difflux-models": (
        "UNet1DModel", "UNet2DModel", "UNet2DConditionModel", "AutoencoderKL", "VQModel",
        "Transformer2DModel", "DiTTransformer2DModel", "PixArtTransformer2DModel",
        "PriorTransformer", "UnCLIPTextProjModel", "Kandinsky3UNet", "CLIPImageProjection",
    ),
    "difflux-pipelines-unconditional": (
        "DDPMPipeline", "DDIMPipeline", "PNDMPipeline", "LDMPipeline", "ScoreSdeVePipeline",
        "KarrasVePipeline", "ConsistencyModelPipeline", "DiTPipeline", "DanceDiffusionPipeline",
        "RePaintPipeline", "RePaintScheduler",
    ),
    "difflux-stable-diffusion": (
        "StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
        "StableDiffusionDepth2ImgPipeline", "StableDiffusionImageVariationPipeline",
        "StableDiffusionLatentUpscalePipeline", "StableDiffusionUpscalePipeline",
        "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
        "StableDiffusionSafetyChecker",
    ),
    "difflux-pixart": ("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
    "difflux-deepfloyd-if": (
        "IFPipeline", "IFSuperResolutionPipeline", "IFImg2ImgPipeline", "IFImg2ImgSuperResolutionPipeline",
        "IFInpaintingPipeline", "IFInpaintingSuperResolutionPipeline", "IFSafetyChecker", "IFWatermarker",
    ),
    "difflux-pipelines-classic": (
        "LDMTextToImagePipeline", "LDMBertModel", "LDMSuperResolutionPipeline", "VQDiffusionPipeline",
        "LearnedClassifierFreeSamplingEmbeddings", "ValueGuidedRLPipeline",
    ),
    "difflux-wuerstchen": (
        "WuerstchenPrior", "WuerstchenDiffNeXt", "PaellaVQModel", "WuerstchenPriorPipeline",
        "WuerstchenDecoderPipeline", "WuerstchenCombinedPipeline",
    ),
    "difflux-unclip": (
        "UnCLIPPipeline", "UnCLIPImageVariationPipeline", "StableUnCLIPPipeline", "StableUnCLIPImg2ImgPipeline",
        "StableUnCLIPImageNormalizer",
    ),
    "difflux-kandinsky": (
        "KandinskyV22Pipeline", "KandinskyV22Img2ImgPipeline", "KandinskyV22ControlnetPipeline",
        "KandinskyV22ControlnetImg2ImgPipeline", "KandinskyV22PriorPipeline", "KandinskyV22PriorEmb2EmbPipeline",
        "KandinskyV22CombinedPipeline", "KandinskyV22Img2ImgCombinedPipeline", "KandinskyV22InpaintPipeline",
        "KandinskyV22InpaintCombinedPipeline", "KandinskyPipeline", "KandinskyImg2ImgPipeline",
        "KandinskyInpaintPipeline", "KandinskyPriorPipeline", "KandinskyCombinedPipeline",
        "KandinskyImg2ImgCombinedPipeline", "KandinskyInpaintCombinedPipeline", "MultilingualCLIP",
        "Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline",
    ),
    "difflux-sd-guidance": (
        "StableDiffusionSAGPipeline", "StableDiffusionAttendAndExcitePipeline", "StableDiffusionGLIGENPipeline",
        "StableDiffusionGLIGENTextImagePipeline", "StableDiffusionDiffEditPipeline",
        "StableDiffusionPix2PixZeroPipeline",
    ),
    "difflux-sd-variants": (
        "LatentConsistencyModelPipeline", "LatentConsistencyModelImg2ImgPipeline",
        "StableDiffusionInstructPix2PixPipeline", "StableDiffusionXLInstructPix2PixPipeline",
        "StableDiffusionPanoramaPipeline", "StableDiffusionLDM3DPipeline",
        "StableDiffusionParadigmsPipeline",
        "SemanticStableDiffusionPipeline",
        "CycleDiffusionPipeline",
        "StableDiffusionModelEditingPipeline",
        "AltDiffusionPipeline", "AltDiffusionImg2ImgPipeline", "RobertaSeriesModelWithTransformation",
        "PaintByExamplePipeline", "PaintByExampleImageEncoder",
    ),
    "difflux-controlnet": (
        "ControlNetModel", "MultiControlNetModel", "StableDiffusionControlNetPipeline",
        "StableDiffusionControlNetImg2ImgPipeline",
        "StableDiffusionControlNetInpaintPipeline", "StableDiffusionXLControlNetPipeline",
        "StableDiffusionXLControlNetImg2ImgPipeline", "StableDiffusionXLControlNetInpaintPipeline",
        "ControlNetUnionModel", "MultiControlNetUnionModel", "StableDiffusionXLControlNetUnionPipeline",
        "StableDiffusionXLControlNetUnionImg2ImgPipeline", "StableDiffusionXLControlNetUnionInpaintPipeline",
        "T2IAdapter", "MultiAdapter", "StableDiffusionAdapterPipeline", "StableDiffusionXLAdapterPipeline",
        "ControlNetXSAdapter", "UNetControlNetXSModel", "StableDiffusionControlNetXSPipeline",
        "StableDiffusionXLControlNetXSPipeline",
    ),
    "difflux-audio": (
        "AudioLDMPipeline", "MusicLDMPipeline", "AudioLDM2Pipeline", "AudioLDM2UNet2DConditionModel",
        "AudioLDM2ProjectionModel", "AudioDiffusionPipeline", "Mel", "SpectrogramDiffusionPipeline",
        "SpectrogramNotesEncoder", "SpectrogramContEncoder", "T5FilmDecoder", "OnnxRuntimeModel",
    ),
    "difflux-flax": (
        "FlaxDDIMScheduler", "FlaxDDPMScheduler", "FlaxPNDMScheduler", "FlaxLMSDiscreteScheduler",
        "FlaxEulerDiscreteScheduler", "FlaxDPMSolverMultistepScheduler",
        "FlaxUNet2DConditionModel", "FlaxAutoencoderKL", "FlaxDiffusionPipeline", "FlaxStableDiffusionPipeline",
        "FlaxStableDiffusionImg2ImgPipeline", "FlaxStableDiffusionInpaintPipeline",
    ),
}

#: First-party distributions that register no class named in checkpoints (backends, bridges, tools).
_OTHER_FIRST_PARTY = frozenset({
    "difflux-transformers", "difflux-optimize", "difflux-attention-sdpa", "difflux-attention-xformers",
    "difflux-attention-flash", "difflux-attention-sage", "difflux-ray", "difflux-context-parallel",
})
# fmt: on

PROVIDERS: dict[str, str] = {name: dist for dist, names in _BY_DISTRIBUTION.items() for name in names}


def install_hint(distribution: str) -> str:
    """How to install ``distribution``: ``pip install NAME``, and for a first-party one, also from a checkout.

    A first-party distribution may not be on the package index; its folder in a difflux checkout is
    ``core/`` (``difflux``), ``hub/`` (``difflux-hub``) or ``plugins/<name>/`` (``difflux-<name>``).
    """
    hint = f"pip install {distribution}"
    if distribution == "difflux":
        folder = "core"
    elif distribution == "difflux-hub":
        folder = "hub"
    elif distribution in PROVIDERS.values() or distribution in _OTHER_FIRST_PARTY:
        folder = "plugins/" + distribution.removeprefix("difflux-")
    else:
        return hint
    return f"{hint} (or, from a difflux checkout, pip install -e ./{folder})"
