"""Shared pieces of the autoencoders: the convolutional encoder and decoder, the diagonal Gaussian
posterior, and tiled processing with linear blending of overlapping tiles."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import torch
from difflux.modeling import ModelMixin
from difflux.outputs import BaseOutput
from difflux.torch_utils import randn_tensor
from torch import nn

from .layers.attention import AttentionProcessorMixin
from .layers.normalization import SpatialNorm
from .unet_2d_blocks import (
    BlockOptions,
    OutputHeadMixin,
    UNetMidBlock2D,
    build_down_blocks,
    build_up_blocks,
)

__all__ = ["AutoencoderBase", "Decoder", "DecoderOutput", "DiagonalGaussianDistribution", "Encoder", "tiled_apply"]


@dataclasses.dataclass
class DecoderOutput(BaseOutput):
    """Decoded images ``(batch, channels, height, width)``."""

    sample: torch.Tensor
    commit_loss: torch.Tensor | None = None


class Encoder(nn.Module, OutputHeadMixin):
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
        self.down_blocks = build_down_blocks(
            down_block_types, block_out_channels, lambda _, out_ch: dataclasses.replace(base, attention_head_dim=out_ch)
        )
        self.mid_block = UNetMidBlock2D(
            block_out_channels[-1],
            dataclasses.replace(base, num_layers=1, attention_head_dim=block_out_channels[-1]),
            add_attention=mid_block_add_attention,
        )
        self._init_output_head(
            block_out_channels[-1],
            2 * out_channels if double_z else out_channels,
            groups=norm_num_groups,
            eps=1e-6,
            act_fn=act_fn,
        )

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        sample = self.conv_in(sample)
        for block in self.down_blocks:
            sample = block(sample)
        return self._output_head(self.mid_block(sample))


class Decoder(nn.Module, OutputHeadMixin):
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
        if norm_type not in ("group", "spatial"):
            raise ValueError(f"unknown decoder norm_type {norm_type!r}; expected 'group' or 'spatial' (MoVQ)")
        # spatial (MoVQ): every norm is modulated by the quantized latent, which has in_channels channels
        spatial = norm_type == "spatial"
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[-1], kernel_size=3, stride=1, padding=1)
        base = BlockOptions(
            num_layers=layers_per_block + 1,
            temb_channels=in_channels if spatial else None,
            resnet_eps=1e-6,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            resnet_time_scale_shift="spatial" if spatial else "default",
        )
        # Diffusers registers up_blocks before mid_block but builds the mid block first
        self.up_blocks = nn.ModuleList()
        self.mid_block = UNetMidBlock2D(
            block_out_channels[-1],
            dataclasses.replace(base, num_layers=1, attention_head_dim=block_out_channels[-1]),
            add_attention=mid_block_add_attention,
        )
        self.up_blocks.extend(
            build_up_blocks(
                up_block_types,
                block_out_channels,
                lambda _, out_ch: dataclasses.replace(base, attention_head_dim=out_ch),
                skip_connections=False,
            )
        )
        if spatial:
            self.conv_norm_out = SpatialNorm(block_out_channels[0], in_channels)
            self.conv_act = nn.SiLU()
            self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, 3, padding=1)
        else:
            self._init_output_head(block_out_channels[0], out_channels, groups=norm_num_groups, eps=1e-6, act_fn=act_fn)

    def forward(self, sample: torch.Tensor, latent_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """``latent_embeds``: the quantized latent, needed by a spatial-norm (MoVQ) decoder."""
        sample = self.conv_in(sample)
        up_dtype = next(iter(self.up_blocks.parameters())).dtype
        sample = self.mid_block(sample, latent_embeds).to(up_dtype)
        for block in self.up_blocks:
            sample = block(sample, latent_embeds)
        if isinstance(self.conv_norm_out, SpatialNorm):
            if latent_embeds is None:
                raise ValueError("a spatial-norm (MoVQ) decoder needs latent_embeds, the quantized latent")
            if self.conv_act is None:
                raise RuntimeError("Decoder.forward: internal check failed: self.conv_act is not None")
            out: torch.Tensor = self.conv_out(self.conv_act(self.conv_norm_out(sample, latent_embeds)))
            return out
        return self._output_head(sample)


@dataclasses.dataclass(frozen=True)
class CoderOptions:
    """The config keys that an autoencoder's :class:`Encoder` and :class:`Decoder` share."""

    down_block_types: Sequence[str]
    up_block_types: Sequence[str]
    block_out_channels: Sequence[int]
    layers_per_block: int
    act_fn: str
    norm_num_groups: int
    mid_block_add_attention: bool

    def encoder(self, in_channels: int, latent_channels: int, *, double_z: bool) -> Encoder:
        return Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=self.down_block_types,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            act_fn=self.act_fn,
            norm_num_groups=self.norm_num_groups,
            double_z=double_z,
            mid_block_add_attention=self.mid_block_add_attention,
        )

    def decoder(self, latent_channels: int, out_channels: int, *, norm_type: str = "group") -> Decoder:
        return Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=self.up_block_types,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            act_fn=self.act_fn,
            norm_type=norm_type,
            mid_block_add_attention=self.mid_block_add_attention,
        )


class AutoencoderBase(ModelMixin, AttentionProcessorMixin):
    """What :class:`AutoencoderKL` and :class:`VQModel` share: an :class:`Encoder` and a
    :class:`Decoder` (built by :class:`CoderOptions`), and the optional 1x1 convolutions around
    the latent space (``quant_conv`` after the encoder, ``post_quant_conv`` before the decoder)."""

    encoder: Encoder
    decoder: Decoder
    quant_conv: nn.Module | None
    post_quant_conv: nn.Module | None

    def _encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output, through ``quant_conv`` when there is one."""
        h: torch.Tensor = self.encoder(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        return h

    def _decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """``post_quant_conv`` (when there is one), then the decoder (a spatial-norm decoder also
        gets ``z`` itself, the quantized latent)."""
        quant = z
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        spatial = isinstance(self.decoder.conv_norm_out, SpatialNorm)
        out: torch.Tensor = self.decoder(z, quant if spatial else None)
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
