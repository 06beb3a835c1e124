"""Which first-party distribution provides each Diffusers class name.

Used only for error messages: when a checkpoint names a class that no installed plugin
registers, the error says what to ``pip install``.  A test checks this table against what the
installed first-party plugins actually register.
"""

from __future__ import annotations

__all__ = ["PROVIDERS"]

_BY_DISTRIBUTION: dict[str, tuple[str, ...]] = {
    "difflux-schedulers": (
        "DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "PNDMScheduler",
        "LMSDiscreteScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler",
        "UniPCMultistepScheduler", "DEISMultistepScheduler", "LCMScheduler", "KarrasVeScheduler",
        "ScoreSdeVeScheduler", "CMStochasticIterativeScheduler", "FlowMatchEulerDiscreteScheduler",
        "EDMEulerScheduler",
    ),
    "difflux-models": (
        "UNet1DModel", "UNet2DModel", "UNet2DConditionModel", "AutoencoderKL", "VQModel",
        "Transformer2DModel", "DiTTransformer2DModel", "PixArtTransformer2DModel", "ControlNetModel",
        "PriorTransformer", "T2IAdapter",
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
    "difflux-flax": ("FlaxDiffusionPipeline",),
}

PROVIDERS: dict[str, str] = {name: dist for dist, names in _BY_DISTRIBUTION.items() for name in names}
