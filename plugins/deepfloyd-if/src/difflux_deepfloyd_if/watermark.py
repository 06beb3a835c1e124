"""``IFWatermarker``: pastes DeepFloyd's small RGBA mark into the lower-right corner of PIL outputs.

Saved as Diffusers saves it (``["deepfloyd_if", "IFWatermarker"]``, one buffer ``watermark_image``
of shape ``(62, 62, 4)`` holding RGBA values 0-255). The mark's size and margin scale with the
square root of the image area relative to 1024x1024, as in the IF reference code
(deep-floyd/IF, ``deepfloyd_if/modules/base.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import PIL.Image
import torch
from difflux.modeling import ModelMixin

__all__ = ["IFWatermarker"]

#: side of the stored mark and its margin from the corner, in pixels of a 1024x1024 image
MARK_SIZE = 62
MARGIN = 14


class IFWatermarker(ModelMixin):
    """The watermark as a model with no config (a buffer to load); :meth:`apply_watermark` stamps PIL images."""

    watermark_image: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("watermark_image", torch.zeros((MARK_SIZE, MARK_SIZE, 4)))

    def apply_watermark(
        self, images: Sequence[PIL.Image.Image], sample_size: int | None = None
    ) -> Sequence[PIL.Image.Image]:
        """Stamp every image in place (all of the first image's size) and return them.

        ``sample_size``: the side (pixels) the model generates at; smaller outputs get the mark as at that size.
        """
        if not images:
            return images
        height, width = images[0].height, images[0].width
        scale = min(height, width) / (sample_size or height)
        h, w = (int(height / scale), int(width / scale)) if scale < 1 else (height, width)
        k = (h * w / 1024**2) ** 0.5
        size, right, bottom = int(k * MARK_SIZE), w - int(MARGIN * k), h - int(MARGIN * k)
        rgba = self.watermark_image.to(torch.uint8).cpu().numpy()
        mark = PIL.Image.fromarray(rgba, mode="RGBA").resize(
            (size, size), PIL.Image.Resampling.BICUBIC, reducing_gap=None
        )
        for image in images:
            image.paste(mark, box=(right - size, bottom - size, right, bottom), mask=mark.split()[-1])
        return images
