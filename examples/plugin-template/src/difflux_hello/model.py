"""HelloDenoiser: a tiny convolutional noise predictor, saved and loaded in the Diffusers format."""

from __future__ import annotations

import torch
from difflux import ModelMixin

__all__ = ["HelloDenoiser"]


class HelloDenoiser(ModelMixin):
    """Predicts the noise in ``sample`` at ``timestep``; ``__init__`` arguments are its config (config.json).

    :param channels: image channels (3 for RGB).
    :param hidden: channels of the hidden layer.
    :param sample_size: height and width of the images it makes, in pixels.
    """

    def __init__(self, channels: int = 3, hidden: int = 8, sample_size: int = 8) -> None:
        super().__init__()
        self.conv_in = torch.nn.Conv2d(channels, hidden, 3, padding=1)
        self.time_proj = torch.nn.Linear(1, hidden)
        self.conv_out = torch.nn.Conv2d(hidden, channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        """``sample`` ``(batch, channels, height, width)`` float; ``timestep`` a scalar; returns the same shape."""
        t = torch.as_tensor(timestep, dtype=sample.dtype, device=sample.device).reshape(1, 1) / 1000
        hidden = self.conv_in(sample) + self.time_proj(t)[..., None, None]
        out: torch.Tensor = self.conv_out(torch.nn.functional.silu(hidden))
        return out
