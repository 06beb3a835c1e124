"""Which first-party distribution provides each Diffusers class name.

Used only for error messages: when a checkpoint names a class that no installed plugin
registers, the error says what to ``pip install`` (or, when that distribution is installed but
left out by ``DIFFLUX_LOAD_PLUGINS``, says so).  ``core/tests/test_plugin_author.py`` checks it
both ways against what each installed first-party distribution registers: list a class here in
the same commit that registers it, and only then.
"""

from __future__ import annotations

__all__ = ["PROVIDERS"]

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
    ),
    "difflux-models": (
        "UNet1DModel", "UNet2DModel", "UNet2DConditionModel", "AutoencoderKL", "VQModel",
        "Transformer2DModel", "DiTTransformer2DModel", "PixArtTransformer2DModel",
        "PriorTransformer", "UnCLIPTextProjModel", "Kandinsky3UNet",
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
}
# fmt: on

PROVIDERS: dict[str, str] = {name: dist for dist, names in _BY_DISTRIBUTION.items() for name in names}
