"""AltDiffusion: Stable Diffusion conditioned on a multilingual XLM-RoBERTa text encoder (AltCLIP).

Chen et al., *AltCLIP* (2022, arXiv:2211.06679). The sampling is Stable Diffusion's, unchanged;
only the text side differs: an ``XLMRobertaTokenizer`` and a
:class:`~.roberta_series.RobertaSeriesModelWithTransformation` whose projected states the UNet
attends to (with the padding mask passed, per ``use_attention_mask``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from difflux_stable_diffusion._common import StableDiffusionPipelineOutput
from difflux_stable_diffusion.pipeline_stable_diffusion import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from difflux_stable_diffusion.prompts import PromptEmbeds

__all__ = ["AltDiffusionImg2ImgPipeline", "AltDiffusionPipeline", "AltDiffusionPipelineOutput"]


@dataclasses.dataclass
class AltDiffusionPipelineOutput(StableDiffusionPipelineOutput):
    """Images and safety flags of the AltDiffusion pipelines."""


class _AltDiffusion:
    """AltDiffusion's differences from SD: its output class, and no ``clip_skip`` (a CLIP-only option)."""

    def encode_prompt(self, prompt: Any, **kw: Any) -> PromptEmbeds:
        """SD's prompt encoding (the padding mask goes in per ``use_attention_mask``).

        :raises ValueError: for ``clip_skip`` (it takes CLIP's final layer norm, which XLM-R has not), before
            the text encoder runs.
        """
        if kw.get("clip_skip") is not None:
            raise ValueError(f"{type(self).__name__}: clip_skip applies to CLIP text encoders only; leave it None")
        return super().encode_prompt(prompt, **kw)  # type: ignore[misc, no-any-return]

    def wrap_output(self, images: Any, flags: list[bool] | None, return_dict: bool) -> Any:
        if not return_dict:
            return images, flags
        return AltDiffusionPipelineOutput(images=images, nsfw_content_detected=flags)


class AltDiffusionPipeline(_AltDiffusion, StableDiffusionPipeline):
    """Text-to-image with AltDiffusion (multilingual prompts); the arguments are ``StableDiffusionPipeline``'s."""


class AltDiffusionImg2ImgPipeline(_AltDiffusion, StableDiffusionImg2ImgPipeline):
    """Image-to-image with AltDiffusion; the arguments are ``StableDiffusionImg2ImgPipeline``'s."""
