"""Building blocks shared by the ControlNet family (ControlNet, ControlNet-Union, AnimateDiff's SparseControlNet).

* :func:`zero_module` / :func:`zero_conv`: the "zero convolutions" of ControlNet (Zhang, Rao and
  Agrawala, *Adding Conditional Control to Text-to-Image Diffusion Models*, 2023, arXiv:2302.05543):
  1x1 convolutions whose weights and biases start at zero, so a freshly attached control branch
  adds nothing to the frozen UNet until it is trained.
* :class:`ControlNetConditioningEmbedding`: the small convolutional encoder (the paper's E(·)) that
  maps an image-space condition to feature maps at the latent resolution.

State-dict keys (``conv_in``, ``blocks.N``, ``conv_out``) are Diffusers', so published ControlNet
checkpoints load as they are.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ControlNetConditioningEmbedding", "zero_conv", "zero_module"]

_M = TypeVar("_M", bound=nn.Module)


def zero_module(module: _M) -> _M:
    """Set every parameter of ``module`` to zero in place and return it (ControlNet's zero initialisation)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def zero_conv(channels: int, out_channels: int | None = None) -> nn.Conv2d:
    """A 1x1 ``nn.Conv2d(channels, out_channels or channels)`` with zero weight and bias (a ControlNet
    "zero convolution"; ControlNet-XS uses ones that change the width between its two branches).

    The convolution is built with PyTorch's default initialiser first and zeroed after, so it draws
    from the global RNG exactly like Diffusers' (seeded builds give the same following weights).
    """
    return zero_module(nn.Conv2d(channels, channels if out_channels is None else out_channels, kernel_size=1))


class ControlNetConditioningEmbedding(nn.Module):
    """Encode a condition image ``(batch, conditioning_channels, H, W)`` into ``(batch, C, H / 2**k, W / 2**k)``.

    ``k = len(block_out_channels) - 1`` stride-2 stages (3 for the published 16/32/96/256 layout:
    512 px conditions become 64 x 64 feature maps, the SD latent size), SiLU after every
    convolution but the last, which is zero-initialised (:func:`zero_module`). ``C`` is
    ``conditioning_embedding_channels`` (the UNet's first block width). Any float dtype; the
    output has the module's dtype.
    """

    def __init__(
        self,
        conditioning_embedding_channels: int,
        conditioning_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
    ) -> None:
        super().__init__()
        if not block_out_channels:
            raise ValueError("ControlNetConditioningEmbedding needs at least one entry in block_out_channels")
        self.conv_in = nn.Conv2d(conditioning_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in itertools.pairwise(block_out_channels):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = zero_module(
            nn.Conv2d(block_out_channels[-1], conditioning_embedding_channels, kernel_size=3, padding=1)
        )

    def forward(self, conditioning: torch.Tensor) -> torch.Tensor:
        """The feature maps of ``conditioning`` (see the class docstring for shapes)."""
        x = F.silu(self.conv_in(conditioning))
        for block in self.blocks:
            x = F.silu(block(x))
        out: torch.Tensor = self.conv_out(x)
        return out
