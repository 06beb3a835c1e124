"""Shared pieces of the autoencoders: the convolutional encoder and decoder, the diagonal Gaussian
posterior, and tiled processing with linear blending of overlapping tiles."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from difflux.outputs import BaseOutput
from difflux.torch_utils import randn_tensor
from torch import nn

from .layers.activations import get_activation
from .unet_2d_blocks import BlockOptions, UNetMidBlock2D, get_down_block, get_up_block

__all__ = ["Decoder", "DecoderOutput", "DiagonalGaussianDistribution", "Encoder", "tiled_apply"]


@dataclasses.dataclass
class DecoderOutput(BaseOutput):
    """Decoded images ``(batch, channels, height, width)``."""

    sample: torch.Tensor
    commit_loss: torch.Tensor | None = None


class Encoder(nn.Module):
    """``conv_in``, down blocks, mid block (with one attention), norm, act, ``conv_out``.

    ``double_z``: output mean and log-variance (``2 * out_channels`` channels).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        double_z: bool = True,
        mid_block_add_attention: bool = True,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, stride=1, padding=1)
        base = BlockOptions(
            num_layers=layers_per_block,
            temb_channels=None,
            resnet_eps=1e-6,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            downsample_padding=0,
        )
        self.down_blocks = nn.ModuleList()
        out_ch = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    add_downsample=i < len(block_out_channels) - 1,
                    options=dataclasses.replace(base, attention_head_dim=out_ch),
                )
            )
        self.mid_block = UNetMidBlock2D(
            block_out_channels[-1],
            dataclasses.replace(base, num_layers=1, attention_head_dim=block_out_channels[-1]),
            add_attention=mid_block_add_attention,
        )
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[-1], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(
            block_out_channels[-1], 2 * out_channels if double_z else out_channels, kernel_size=3, padding=1
        )

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        for block in self.down_blocks:
            sample = block(sample)
        sample = self.mid_block(sample)
        out: torch.Tensor = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return out


class Decoder(nn.Module):
    """``conv_in``, mid block, up blocks, norm, act, ``conv_out`` (``norm_type="group"``)."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        up_block_types: Sequence[str] = ("UpDecoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
    ) -> None:
        super().__init__()
        if norm_type != "group":
            raise ValueError(f"decoder norm_type {norm_type!r} is not supported by difflux (only 'group')")
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        base = BlockOptions(
            num_layers=layers_per_block + 1,
            temb_channels=None,
            resnet_eps=1e-6,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
        )
        self.mid_block = UNetMidBlock2D(
            block_out_channels[-1],
            dataclasses.replace(base, num_layers=1, attention_head_dim=block_out_channels[-1]),
            add_attention=mid_block_add_attention,
        )
        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        out_ch = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            prev_ch, out_ch = out_ch, reversed_channels[i]
            self.up_blocks.append(
                get_up_block(
                    block_type,
                    in_channels=prev_ch,
                    prev_output_channel=prev_ch,
                    out_channels=out_ch,
                    add_upsample=i < len(block_out_channels) - 1,
                    options=dataclasses.replace(base, attention_head_dim=out_ch),
                )
            )
        self.conv_norm_out = nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=1e-6)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    def forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
        sample = self.conv_in(sample)
        up_dtype = next(iter(self.up_blocks.parameters())).dtype
        sample = self.mid_block(sample, latent_embeds).to(up_dtype)
        for block in self.up_blocks:
            sample = block(sample, latent_embeds)
        out: torch.Tensor = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return out


class DiagonalGaussianDistribution:
    """The encoder's posterior: ``parameters`` holds mean and log-variance stacked on dim 1."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False) -> None:
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """``mean + std * noise``; the noise is drawn like Diffusers draws it for the same generator."""
        noise = randn_tensor(
            self.mean.shape, generator=generator, device=self.parameters.device, dtype=self.parameters.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: DiagonalGaussianDistribution | None = None) -> torch.Tensor:
        """KL divergence to ``other`` (default: the standard normal), summed over channels and pixels."""
        if self.deterministic:
            return torch.tensor([0.0])
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum(
            (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar,
            dim=[1, 2, 3],
        )

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of ``sample``."""
        if self.deterministic:
            return torch.tensor([0.0])
        log_two_pi = 1.8378770664093453
        return 0.5 * torch.sum(log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=list(dims))


def _blend(prev: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> None:
    """Cross-fade the first ``extent`` rows (``dim=2``) or columns (``dim=3``) of ``tile`` from the
    last ones of ``prev``, in place."""
    extent = min(prev.shape[dim], tile.shape[dim], extent)
    if extent <= 0:
        return
    shape = [1, 1, 1, 1]
    shape[dim] = extent
    w = (torch.arange(extent, dtype=torch.float64) / extent).to(tile.dtype).to(tile.device).view(shape)
    head = tile.narrow(dim, 0, extent)
    tail = prev.narrow(dim, prev.shape[dim] - extent, extent)
    head.copy_(tail * (1 - w) + head * w)


def tiled_apply(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    tile_in: int,
    tile_out: int,
    overlap_factor: float,
) -> torch.Tensor:
    """Run ``fn`` on overlapping ``tile_in``-sized tiles of ``x`` and stitch the ``tile_out``-sized
    results, blending each tile's top and left margins into its neighbours'."""
    stride = int(tile_in * (1 - overlap_factor))
    extent = int(tile_out * overlap_factor)
    keep = tile_out - extent
    grid = [
        [fn(x[:, :, i : i + tile_in, j : j + tile_in]) for j in range(0, x.shape[3], stride)]
        for i in range(0, x.shape[2], stride)
    ]
    rows = []
    for i, row in enumerate(grid):
        for j, tile in enumerate(row):
            if i > 0:
                _blend(grid[i - 1][j], tile, extent, 2)
            if j > 0:
                _blend(row[j - 1], tile, extent, 3)
        rows.append(torch.cat([tile[:, :, :keep, :keep] for tile in row], dim=3))
    return torch.cat(rows, dim=2)
