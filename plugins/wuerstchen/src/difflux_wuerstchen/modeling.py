"""Würstchen's three networks: the stage-C prior, the stage-B decoder (DiffNeXt) and the stage-A
Paella VQ-GAN.

Würstchen (Pernias et al., *Würstchen: An Efficient Architecture for Large-Scale Text-to-Image
Diffusion Models*, ICLR 2024) denoises a 42x-compressed image-embedding grid with the prior (stage C),
expands it into VQ latents with the decoder (stage B) and turns those into pixels with the VQ-GAN of
Paella (Rampas et al. 2022, stage A). Both diffusion networks are ConvNeXt-style: depthwise
convolution, channel-last LayerNorm, an MLP with Global Response Normalisation (ConvNeXt V2, Woo et
al. 2023); the noise level ``r`` in ``[0, 1]`` enters through a sinusoidal embedding and a
scale-and-shift per block; text enters through attention over ``[image tokens, text tokens]``.

Config keys and state-dict keys are those of Diffusers' ``WuerstchenPrior``, ``WuerstchenDiffNeXt``
and ``PaellaVQModel`` (``model_index.json`` library ``"wuerstchen"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from difflux.modeling import ModelMixin
from difflux.offload import runs_forward_hooks
from difflux_models.layers import Attention
from difflux_models.vae import DecoderOutput
from difflux_models.vq_model import VectorQuantizer, VQEncoderOutput
from torch import nn
from torch.nn import functional as F

__all__ = ["PaellaVQModel", "WuerstchenDiffNeXt", "WuerstchenPrior"]


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, H, W)`` tensor (no parameters in Würstchen)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _channel_norm(c: int) -> ChannelLayerNorm:
    return ChannelLayerNorm(c, elementwise_affine=False, eps=1e-6)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2's GRN on channel-last ``(B, H, W, C)`` input; keys ``gamma``, ``beta``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        ratio = spatial / (spatial.mean(dim=-1, keepdim=True) + 1e-6)
        out: torch.Tensor = self.gamma * (x * ratio) + self.beta + x
        return out


def _mlp(c_in: int, c: int, dropout: float) -> nn.Sequential:
    # indices are the checkpoint's: 0 linear, 2 GRN, 4 linear
    return nn.Sequential(
        nn.Linear(c_in, c * 4), nn.GELU(), GlobalResponseNorm(c * 4), nn.Dropout(dropout), nn.Linear(c * 4, c)
    )


class TimestepBlock(nn.Module):
    """``x * (1 + a) + b`` with ``(a, b)`` a linear map of the noise-level embedding; key ``mapper``."""

    def __init__(self, c: int, c_timestep: int) -> None:
        super().__init__()
        self.mapper = nn.Linear(c_timestep, c * 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, b = self.mapper(t)[:, :, None, None].chunk(2, dim=1)
        out: torch.Tensor = x * (1 + a) + b
        return out


class ResBlock(nn.Module):
    """Stage-C block: the skip is concatenated before the depthwise convolution."""

    def __init__(self, c: int, c_skip: int = 0, kernel_size: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c + c_skip, c, kernel_size=kernel_size, padding=kernel_size // 2, groups=c)
        self.norm = _channel_norm(c)
        self.channelwise = _mlp(c, c, dropout)

    def forward(self, x: torch.Tensor, x_skip: torch.Tensor | None = None) -> torch.Tensor:
        h = x if x_skip is None else torch.cat([x, x_skip], dim=1)
        h = self.norm(self.depthwise(h)).permute(0, 2, 3, 1)
        out: torch.Tensor = self.channelwise(h).permute(0, 3, 1, 2) + x
        return out


class ResBlockStageB(nn.Module):
    """Stage-B block: the skip is concatenated after the depthwise convolution, before the MLP."""

    def __init__(self, c: int, c_skip: int = 0, kernel_size: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c, c, kernel_size=kernel_size, padding=kernel_size // 2, groups=c)
        self.norm = _channel_norm(c)
        self.channelwise = _mlp(c + c_skip, c, dropout)

    def forward(self, x: torch.Tensor, x_skip: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(self.depthwise(x))
        if x_skip is not None:
            h = torch.cat([h, x_skip], dim=1)
        out: torch.Tensor = self.channelwise(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) + x
        return out


class AttnBlock(nn.Module):
    """Attention of the normed image tokens over ``[image tokens, mapped condition tokens]``."""

    def __init__(self, c: int, c_cond: int, nhead: int, self_attn: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = self_attn
        self.norm = _channel_norm(c)
        self.attention = Attention(query_dim=c, heads=nhead, dim_head=c // nhead, dropout=dropout, bias=True)
        self.kv_mapper = nn.Sequential(nn.SiLU(), nn.Linear(c_cond, c))

    def forward(self, x: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv = self.kv_mapper(kv)
        normed = self.norm(x)
        if self.self_attn:
            kv = torch.cat([normed.flatten(2).transpose(1, 2), kv], dim=1)
        out: torch.Tensor = x + self.attention(normed, encoder_hidden_states=kv)
        return out


def noise_level_embedding(r: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding ``(B, dim)`` of the noise ratio ``r`` ``(B,)`` in ``[0, 1]`` (sin then cos)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=r.device).float() * -(math.log(max_positions) / (half - 1)))
    angles = (r * max_positions)[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb.to(dtype=r.dtype)


def _check_r(name: str, x: torch.Tensor, r: torch.Tensor) -> None:
    if r.ndim != 1 or r.shape[0] != x.shape[0]:
        raise ValueError(
            f"{name}: r must be a 1-D tensor with one noise ratio per sample ({x.shape[0]}), got shape {tuple(r.shape)}"
        )


class WuerstchenPrior(ModelMixin):
    """Stage C: predicts the noise of the image-embedding grid.

    ``forward(x (B, c_in, H, W), r (B,), c (B, S, c_cond)) -> (B, c_in, H, W)`` in ``x``'s dtype;
    ``r`` is the noise ratio in ``[0, 1]`` (the ``DDPMWuerstchenScheduler`` timestep), ``c`` the CLIP
    text token states.
    """

    unet_name = "prior"

    def __init__(
        self,
        c_in: int = 16,
        c: int = 1280,
        c_cond: int = 1024,
        c_r: int = 64,
        depth: int = 16,
        nhead: int = 16,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.c_r = c_r
        self.projection = nn.Conv2d(c_in, c, kernel_size=1)
        self.cond_mapper = nn.Sequential(nn.Linear(c_cond, c), nn.LeakyReLU(0.2), nn.Linear(c, c))
        blocks: list[nn.Module] = []
        for _ in range(depth):
            blocks += [
                ResBlock(c, dropout=dropout),
                TimestepBlock(c, c_r),
                AttnBlock(c, c, nhead, self_attn=True, dropout=dropout),
            ]
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Sequential(_channel_norm(c), nn.Conv2d(c, c_in * 2, kernel_size=1))

    def gen_r_embedding(self, r: torch.Tensor) -> torch.Tensor:
        """``(B, c_r)`` sinusoidal embedding of ``r`` ``(B,)``."""
        return noise_level_embedding(r, self.c_r)

    def forward(self, x: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """:raises ValueError: if ``r`` does not hold one value per sample."""
        _check_r("WuerstchenPrior", x, r)
        h = self.projection(x)
        c_embed = self.cond_mapper(c)
        r_embed = self.gen_r_embedding(r)
        for block in self.blocks:
            if isinstance(block, AttnBlock):
                h = block(h, c_embed)
            elif isinstance(block, TimestepBlock):
                h = block(h, r_embed)
            else:
                h = block(h)
        a, b = self.out(h).chunk(2, dim=1)
        noise: torch.Tensor = (x - a) / ((1 - b).abs() + 1e-5)
        return noise


class WuerstchenDiffNeXt(ModelMixin):
    """Stage B: a UNet of ConvNeXt blocks that denoises VQ latents given the stage-C embeddings.

    ``forward(x (B, c_in, H, W), r (B,), effnet (B, effnet_embd, h, w), clip (B, S, clip_embd))``
    returns the predicted noise ``(B, c_out, H, W)``; ``effnet`` is resized (bicubic) to each level
    and concatenated into the first block's skip there.
    """

    def __init__(
        self,
        c_in: int = 4,
        c_out: int = 4,
        c_r: int = 64,
        patch_size: int = 2,
        c_cond: int = 1024,
        c_hidden: Sequence[int] = (320, 640, 1280, 1280),
        nhead: Sequence[int] = (-1, 10, 20, 20),
        blocks: Sequence[int] = (4, 4, 14, 4),
        level_config: Sequence[str] = ("CT", "CTA", "CTA", "CTA"),
        inject_effnet: Sequence[bool] = (False, True, True, True),
        effnet_embd: int = 16,
        clip_embd: int = 1024,
        kernel_size: int = 3,
        dropout: float | Sequence[float] = 0.1,
    ) -> None:
        super().__init__()
        levels = len(c_hidden)
        for key, value in (
            ("nhead", nhead),
            ("blocks", blocks),
            ("level_config", level_config),
            ("inject_effnet", inject_effnet),
        ):
            if len(value) != levels:
                raise ValueError(
                    f"WuerstchenDiffNeXt: {key} has {len(value)} entries for {levels} levels "
                    f"(c_hidden); give one per level"
                )
        drops = list(dropout) if isinstance(dropout, Sequence) else [float(dropout)] * levels
        self.c_r = c_r
        self.c_cond = c_cond
        self.clip_mapper = nn.Linear(clip_embd, c_cond)
        injects = list(inject_effnet) + list(reversed(inject_effnet))
        self.effnet_mappers = nn.ModuleList(
            [nn.Conv2d(effnet_embd, c_cond, kernel_size=1) if inject else None for inject in injects]  # type: ignore[misc]
        )
        self.seq_norm = nn.LayerNorm(c_cond, elementwise_affine=False, eps=1e-6)
        self.embedding = nn.Sequential(
            nn.PixelUnshuffle(patch_size),
            nn.Conv2d(c_in * patch_size**2, c_hidden[0], kernel_size=1),
            _channel_norm(c_hidden[0]),
        )

        def block(kind: str, width: int, heads: int, c_skip: int, drop: float) -> nn.Module:
            if kind == "C":
                return ResBlockStageB(width, c_skip, kernel_size=kernel_size, dropout=drop)
            if kind == "A":
                return AttnBlock(width, c_cond, heads, self_attn=True, dropout=drop)
            if kind == "T":
                return TimestepBlock(width, c_r)
            raise ValueError(f"WuerstchenDiffNeXt: unknown block type {kind!r} in level_config; use C, T or A")

        self.down_blocks = nn.ModuleList()
        for i in range(levels):
            down = nn.ModuleList()
            if i > 0:
                down.append(
                    nn.Sequential(
                        _channel_norm(c_hidden[i - 1]), nn.Conv2d(c_hidden[i - 1], c_hidden[i], kernel_size=2, stride=2)
                    )
                )
            skip = c_cond if inject_effnet[i] else 0
            for _ in range(blocks[i]):
                for kind in level_config[i]:
                    down.append(block(kind, c_hidden[i], nhead[i], skip, drops[i]))
            self.down_blocks.append(down)
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(levels)):
            up = nn.ModuleList()
            for j in range(blocks[i]):
                for k, kind in enumerate(level_config[i]):
                    skip = c_hidden[i] if i < levels - 1 and j == k == 0 else 0
                    skip += c_cond if inject_effnet[i] else 0
                    up.append(block(kind, c_hidden[i], nhead[i], skip, drops[i]))
            if i > 0:
                up.append(
                    nn.Sequential(
                        _channel_norm(c_hidden[i]),
                        nn.ConvTranspose2d(c_hidden[i], c_hidden[i - 1], kernel_size=2, stride=2),
                    )
                )
            self.up_blocks.append(up)
        self.clf = nn.Sequential(
            _channel_norm(c_hidden[0]),
            nn.Conv2d(c_hidden[0], 2 * c_out * patch_size**2, kernel_size=1),
            nn.PixelShuffle(patch_size),
        )

    def gen_r_embedding(self, r: torch.Tensor) -> torch.Tensor:
        """``(B, c_r)`` sinusoidal embedding of ``r`` ``(B,)``."""
        return noise_level_embedding(r, self.c_r)

    def gen_c_embeddings(self, clip: torch.Tensor) -> torch.Tensor:
        """Map CLIP token states ``(B, S, clip_embd)`` to normed ``(B, S, c_cond)``."""
        out: torch.Tensor = self.seq_norm(self.clip_mapper(clip))
        return out

    def _effnet_at(self, index: int, effnet: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        mapper = self.effnet_mappers[index]
        if mapper is None:
            return None
        resized = F.interpolate(
            effnet.float(), size=like.shape[-2:], mode="bicubic", antialias=True, align_corners=True
        ).to(effnet.dtype)
        out: torch.Tensor = mapper(resized)
        return out

    def _run(
        self,
        block: nn.Module,
        x: torch.Tensor,
        skip: torch.Tensor | None,
        r_embed: torch.Tensor,
        clip: torch.Tensor | None,
    ) -> torch.Tensor:
        out: torch.Tensor
        if isinstance(block, ResBlockStageB):
            out = block(x, skip)
        elif isinstance(block, AttnBlock):
            out = block(x, clip)
        elif isinstance(block, TimestepBlock):
            out = block(x, r_embed)
        else:
            out = block(x)
        return out

    def forward(
        self,
        x: torch.Tensor,
        r: torch.Tensor,
        effnet: torch.Tensor,
        clip: torch.Tensor | None = None,
        x_cat: torch.Tensor | None = None,
        eps: float = 1e-3,
        return_noise: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """With ``return_noise=False`` returns ``(a, b)``, the predicted mean and scale.

        :raises ValueError: if ``r`` does not hold one value per sample.
        """
        if x_cat is not None:
            x = torch.cat([x, x_cat], dim=1)
        _check_r("WuerstchenDiffNeXt", x, r)
        r_embed = self.gen_r_embedding(r)
        cond = self.gen_c_embeddings(clip) if clip is not None else None
        h = self.embedding(x)
        levels: list[torch.Tensor] = []
        for i, down in enumerate(self.down_blocks):
            injected: torch.Tensor | None = None
            for blk in cast(nn.ModuleList, down):
                if isinstance(blk, ResBlockStageB) and injected is None:
                    injected = self._effnet_at(i, effnet, h)
                h = self._run(blk, h, injected, r_embed, cond)
            levels.insert(0, h)
        h = levels[0]
        for i, up in enumerate(self.up_blocks):
            injected = None
            for j, blk in enumerate(cast(nn.ModuleList, up)):
                skip: torch.Tensor | None = None
                if isinstance(blk, ResBlockStageB):
                    if injected is None:
                        injected = self._effnet_at(len(self.down_blocks) + i, effnet, h)
                    skip = levels[i] if j == 0 and i > 0 else None
                    if injected is not None:
                        skip = injected if skip is None else torch.cat([skip, injected], dim=1)
                h = self._run(blk, h, skip, r_embed, cond)
        a, b = self.clf(h).chunk(2, dim=1)
        b = b.sigmoid() * (1 - eps * 2) + eps
        if return_noise:
            noise: torch.Tensor = (x - a) / b
            return noise
        return a, b


class MixingResidualBlock(nn.Module):
    """Paella's residual block: LayerNorm, depthwise 3x3 (replicate padding), LayerNorm, MLP, with six
    learned modulation scalars ``gammas``."""

    def __init__(self, inp_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(inp_channels, elementwise_affine=False, eps=1e-6)
        self.depthwise = nn.Sequential(
            nn.ReplicationPad2d(1), nn.Conv2d(inp_channels, inp_channels, kernel_size=3, groups=inp_channels)
        )
        self.norm2 = nn.LayerNorm(inp_channels, elementwise_affine=False, eps=1e-6)
        self.channelwise = nn.Sequential(
            nn.Linear(inp_channels, embed_dim), nn.GELU(), nn.Linear(embed_dim, inp_channels)
        )
        self.gammas = nn.Parameter(torch.zeros(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gammas
        h = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * (1 + g[0]) + g[1]
        x = x + self.depthwise(h) * g[2]
        h = self.norm2(x.permute(0, 2, 3, 1)) * (1 + g[3]) + g[4]
        out: torch.Tensor = x + self.channelwise(h).permute(0, 3, 1, 2) * g[5]
        return out


class PaellaVQModel(ModelMixin):
    """Stage A: Paella's VQ-GAN. ``encode`` maps ``(B, in_channels, H, W)`` images in ``[-1, 1]`` to
    ``(B, latent_channels, H / (2 * 2**(levels-1)), ...)`` latents; ``decode`` inverts it (quantising
    first unless ``force_not_quantize``, the default, as Würstchen's stage B already outputs codebook
    space)."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        up_down_scale_factor: int = 2,
        levels: int = 2,
        bottleneck_blocks: int = 12,
        embed_dim: int = 384,
        latent_channels: int = 4,
        num_vq_embeddings: int = 8192,
        scale_factor: float = 0.3764,
    ) -> None:
        super().__init__()
        widths = [embed_dim // 2**i for i in reversed(range(levels))]
        self.in_block = nn.Sequential(
            nn.PixelUnshuffle(up_down_scale_factor),
            nn.Conv2d(in_channels * up_down_scale_factor**2, widths[0], kernel_size=1),
        )
        down: list[nn.Module] = []
        for i in range(levels):
            if i > 0:
                down.append(nn.Conv2d(widths[i - 1], widths[i], kernel_size=4, stride=2, padding=1))
            down.append(MixingResidualBlock(widths[i], widths[i] * 4))
        down.append(
            nn.Sequential(
                nn.Conv2d(widths[-1], latent_channels, kernel_size=1, bias=False), nn.BatchNorm2d(latent_channels)
            )
        )
        self.down_blocks = nn.Sequential(*down)
        self.vquantizer = VectorQuantizer(num_vq_embeddings, vq_embed_dim=latent_channels, legacy=False, beta=0.25)
        up: list[nn.Module] = [nn.Sequential(nn.Conv2d(latent_channels, widths[-1], kernel_size=1))]
        for i in range(levels):
            width = widths[levels - 1 - i]
            for _ in range(bottleneck_blocks if i == 0 else 1):
                up.append(MixingResidualBlock(width, width * 4))
            if i < levels - 1:
                up.append(nn.ConvTranspose2d(width, widths[levels - 2 - i], kernel_size=4, stride=2, padding=1))
        self.up_blocks = nn.Sequential(*up)
        self.out_block = nn.Sequential(
            nn.Conv2d(widths[0], out_channels * up_down_scale_factor**2, kernel_size=1),
            nn.PixelShuffle(up_down_scale_factor),
        )

    @runs_forward_hooks
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> VQEncoderOutput | tuple[torch.Tensor]:
        """Latents ``(B, latent_channels, h, w)`` of images ``x`` ``(B, in_channels, H, W)``."""
        h = self.down_blocks(self.in_block(x))
        return VQEncoderOutput(latents=h) if return_dict else (h,)

    @runs_forward_hooks
    def decode(
        self, h: torch.Tensor, force_not_quantize: bool = True, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor]:
        """Images ``(B, out_channels, H, W)`` from latents ``h``."""
        quant = h if force_not_quantize else self.vquantizer(h)[0]
        dec = self.out_block(self.up_blocks(quant))
        return DecoderOutput(sample=dec) if return_dict else (dec,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        """Encode then decode ``sample``."""
        latents = self.encode(sample).latents  # type: ignore[union-attr]
        dec = self.decode(latents).sample  # type: ignore[union-attr]
        return DecoderOutput(sample=dec) if return_dict else (dec,)
