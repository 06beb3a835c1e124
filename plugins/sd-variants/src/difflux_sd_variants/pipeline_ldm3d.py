"""LDM3D: an RGB image and its depth map from one prompt, with a VAE that decodes both.

Stan et al., *LDM3D: Latent Diffusion Model for 3D* (2023, arXiv:2305.10853). The denoising is
Stable Diffusion's; the VAE decodes four channels (RGB + depth, ``ldm3d-4c``) or six (RGB + depth
packed as an RGB-like 16-bit value, ``ldm3d`` / ``ldm3d-pano``), which the output splits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from difflux.image import postprocess
from difflux.outputs import BaseOutput
from difflux.pipeline_utils import LegacyCallback, StepCallback
from difflux_stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
from difflux_stable_diffusion.prompts import Prompt

__all__ = ["LDM3DPipelineOutput", "StableDiffusionLDM3DPipeline", "split_rgb_depth"]

Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclasses.dataclass
class LDM3DPipelineOutput(BaseOutput):
    """RGB images and depth maps (PIL: RGB and 16-bit ``I;16`` images; numpy: ``(B, H, W, 3)`` in ``[0, 1]``
    and ``(B, H, W, 1)`` in ``[0, 1]``, or the unpacked 16-bit depth ``(B, H, W)`` of a six-channel VAE)."""

    rgb: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    depth: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None
    nsfw_content_detected: list[bool] | None = None


def _packed_depth(rgb_like: np.ndarray) -> np.ndarray:
    """A depth map packed in the green (high byte) and blue (low byte) channels of ``(H, W, 3)`` values in
    ``[0, 1]``, as 16-bit values ``G * 256 + B`` (in the input's float dtype)."""
    code = (rgb_like * 255).round().astype(np.int32)
    return (code[:, :, 1] * 256 + code[:, :, 2]).astype(rgb_like.dtype)


def split_rgb_depth(image: torch.Tensor, output_type: str) -> tuple[Any, Any]:
    """``(rgb, depth)`` of decoded ``(B, 4 or 6, H, W)`` images in ``[0, 1]`` as ``output_type``.

    :raises ValueError: for a channel count other than 4 or 6.
    """
    channels = image.shape[1]
    if channels not in (4, 6):
        raise ValueError(
            f"LDM3D: the VAE decoded {channels} channels; expected 4 (RGB + depth) or 6 (RGB + packed depth)"
        )
    if output_type == "pt":
        return image[:, :3], image[:, 3:]
    array = image.detach().float().permute(0, 2, 3, 1).cpu().numpy()
    rgb = array[..., :3]
    depth = np.stack([_packed_depth(a[..., 3:]) for a in array]) if channels == 6 else array[..., 3:]
    if output_type == "np":
        return rgb, depth
    images = [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in rgb]
    # 2-D uint16 arrays become 16-bit greyscale ("I;16") images
    if channels == 6:
        depth_images = [PIL.Image.fromarray(d.astype(np.uint16)) for d in depth]
    else:
        depth_images = [PIL.Image.fromarray((d[..., 0] * 65535.0).astype(np.uint16)) for d in depth]
    return images, depth_images


class StableDiffusionLDM3DPipeline(StableDiffusionPipeline):
    """Text-to-RGB-and-depth with LDM3D (Intel's ``ldm3d``, ``ldm3d-4c``, ``ldm3d-pano`` checkpoints): the SD
    text-to-image pipeline with LDM3D's defaults and an output split into RGB and depth."""

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _scheduler_fixes = None  # Diffusers' LDM3D uses the scheduler config as given

    def run_safety_checker(self, image: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, list[bool] | None]:
        """The safety checker looks at the RGB channels; flagged samples are blacked out in every channel."""
        checker = getattr(self, "safety_checker", None)
        if checker is None:
            return image, None
        _, flags = super().run_safety_checker(image[:, :3], dtype)
        if flags is None:
            return image, None
        keep = torch.tensor([not f for f in flags], device=image.device, dtype=image.dtype).view(-1, 1, 1, 1)
        return image * keep, flags

    def output(self, latents: torch.Tensor, output_type: str, return_dict: bool, generator: Generator = None) -> Any:
        """Decode and split into RGB and depth (``output_type="latent"``: the latents as ``rgb``, no depth)."""
        if output_type == "latent":
            rgb: Any = latents
            depth: Any = None
            flags = None
        else:
            decoded, flags = self.run_safety_checker(self.decode(latents, generator), latents.dtype)
            image: torch.Tensor = postprocess(decoded, "pt")  # type: ignore[assignment]
            if flags is not None:  # flagged samples stay black (not denormalised from -1)
                image = torch.where(torch.tensor(flags).view(-1, 1, 1, 1), decoded, image)
            rgb, depth = split_rgb_depth(image, output_type)
        if not return_dict:
            return (rgb, depth), flags
        return LDM3DPipelineOutput(rgb=rgb, depth=depth, nsfw_content_detected=flags)

    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 49,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        callback: LegacyCallback | None = None,
        callback_steps: int | None = None,
    ) -> Any:
        """Generate RGB images and depth maps for ``prompt`` (Stable Diffusion's text-to-image; LDM3D's defaults).

        :returns: ``LDM3DPipelineOutput(rgb, depth, nsfw_content_detected)``, or ``((rgb, depth), flags)``.
        :raises ValueError | TypeError: on bad input, before any model runs.
        """
        arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        return super().__call__(**arguments)
