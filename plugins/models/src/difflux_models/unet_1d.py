"""``UNet1DModel``: the 1D UNet of Dance Diffusion (audio) and of the RL value function / planner."""

from __future__ import annotations

import dataclasses

import torch
from difflux.modeling import ModelMixin
from difflux.outputs import BaseOutput
from torch import nn

from .layers.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps
from .unet_1d_blocks import MidBlock, OutBlock, get_down_block, get_mid_block, get_out_block, get_up_block

__all__ = ["UNet1DModel", "UNet1DOutput"]


@dataclasses.dataclass
class UNet1DOutput(BaseOutput):
    """What :class:`UNet1DModel` returns: ``sample`` shaped ``(batch, channels, length)``."""

    sample: torch.Tensor


class UNet1DModel(ModelMixin):
    """A 1D UNet mapping a noisy ``(batch, channels, length)`` sample and a timestep to a same-shaped output.

    The config keys are those of Diffusers' ``UNet1DModel``.  With ``use_timestep_embedding``
    false (Dance Diffusion) the time features are broadcast along the length and fed to the
    blocks as extra channels; with it true (RL planner) an MLP turns them into a vector.
    """

    _skip_layerwise_casting_patterns = ("norm",)

    def __init__(
        self,
        sample_size: int = 65536,
        sample_rate: int | None = None,
        in_channels: int = 2,
        out_channels: int = 2,
        extra_in_channels: int = 0,
        time_embedding_type: str = "fourier",
        time_embedding_dim: int | None = None,
        flip_sin_to_cos: bool = True,
        use_timestep_embedding: bool = False,
        freq_shift: float = 0.0,
        down_block_types: tuple[str, ...] = ("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
        up_block_types: tuple[str, ...] = ("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"),
        mid_block_type: str = "UNetMidBlock1D",
        out_block_type: str | None = None,
        block_out_channels: tuple[int, ...] = (32, 32, 64),
        act_fn: str | None = None,
        norm_num_groups: int = 8,
        layers_per_block: int = 1,
        downsample_each_block: bool = False,
    ) -> None:
        super().__init__()
        self.sample_size = sample_size
        base = block_out_channels[0]

        self.time_proj: nn.Module
        if time_embedding_type == "fourier":
            time_dim = time_embedding_dim or base * 2
            if time_dim % 2:
                raise ValueError(f"UNet1DModel: the fourier time embedding size must be even, got {time_dim}")
            self.time_proj = GaussianFourierProjection(
                embedding_size=time_dim // 2, set_W_to_weight=False, log=False, flip_sin_to_cos=flip_sin_to_cos
            )
            time_features = time_dim
        elif time_embedding_type == "positional":
            self.time_proj = Timesteps(base, flip_sin_to_cos=flip_sin_to_cos, downscale_freq_shift=freq_shift)
            time_features = base
        else:
            raise ValueError(
                f"UNet1DModel: time_embedding_type {time_embedding_type!r} is not one of 'fourier', 'positional'"
            )
        if use_timestep_embedding:
            if act_fn is None:
                raise ValueError("UNet1DModel: use_timestep_embedding needs act_fn (e.g. 'mish') for the time MLP")
            self.time_mlp = TimestepEmbedding(
                in_channels=time_features, time_embed_dim=base * 4, act_fn=act_fn, out_dim=base
            )

        n_blocks = len(block_out_channels)
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()  # registered before the mid block, built after it (Diffusers' order)
        channels = in_channels
        for i, block_type in enumerate(down_block_types):
            block_in = channels + (extra_in_channels if i == 0 else 0)
            channels = block_out_channels[i]
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers_per_block,
                    in_channels=block_in,
                    out_channels=channels,
                    temb_channels=base,
                    add_downsample=i != n_blocks - 1 or downsample_each_block,
                )
            )

        self.mid_block: MidBlock | None = get_mid_block(
            mid_block_type,
            in_channels=block_out_channels[-1],
            mid_channels=block_out_channels[-1],
            out_channels=block_out_channels[-1],
            embed_dim=base,
            num_layers=layers_per_block,
            add_downsample=downsample_each_block,
        )

        reversed_channels = list(reversed(block_out_channels))
        last_out = out_channels if out_block_type is None else base
        channels = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            block_in = channels
            channels = reversed_channels[i + 1] if i < len(up_block_types) - 1 else last_out
            self.up_blocks.append(
                get_up_block(
                    block_type,
                    num_layers=layers_per_block,
                    in_channels=block_in,
                    out_channels=channels,
                    temb_channels=base,
                    add_upsample=i != n_blocks - 1,
                )
            )

        self.out_block: OutBlock | None = get_out_block(
            out_block_type=out_block_type,
            num_groups_out=norm_num_groups if norm_num_groups is not None else min(base // 4, 32),
            embed_dim=base,
            out_channels=out_channels,
            act_fn=act_fn,
            fc_dim=block_out_channels[-1] // 4,
        )

    def _time_features(self, sample: torch.Tensor, timestep: torch.Tensor | float | int) -> torch.Tensor:
        """Time features: ``(batch, base)`` through the MLP, else ``(batch, features, length)``."""
        if not torch.is_tensor(timestep):
            timesteps = torch.tensor([timestep], dtype=torch.long, device=sample.device)
        elif timestep.ndim == 0:
            timesteps = timestep[None].to(sample.device)
        else:
            timesteps = timestep
        emb: torch.Tensor = self.time_proj(timesteps)
        if self.config.use_timestep_embedding:
            mlp_out: torch.Tensor = self.time_mlp(emb.to(sample.dtype))
            return mlp_out
        emb = emb[..., None].repeat(1, 1, sample.shape[2]).to(sample.dtype)
        return emb.broadcast_to((sample.shape[0], *emb.shape[1:]))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        return_dict: bool = True,
    ) -> UNet1DOutput | tuple[torch.Tensor]:
        """Denoise ``sample`` (``(batch, in_channels, length)``) at ``timestep``."""
        temb = self._time_features(sample, timestep)

        skips: tuple[torch.Tensor, ...] = ()
        for down in self.down_blocks:
            sample, res = down(hidden_states=sample, temb=temb)
            skips += res

        if self.mid_block is not None:
            sample = self.mid_block(sample, temb)

        for up in self.up_blocks:
            sample = up(sample, res_hidden_states_tuple=skips[-1:], temb=temb)
            skips = skips[:-1]

        if self.out_block is not None:
            sample = self.out_block(sample, temb)

        if not return_dict:
            return (sample,)
        return UNet1DOutput(sample=sample)
