"""``UNet2DModel``: the unconditional (optionally class-conditional) UNet of DDPM / LDM / score-SDE."""

from __future__ import annotations

import dataclasses

import torch
from difflux.modeling import ModelMixin
from difflux.outputs import BaseOutput
from torch import nn

from .layers.attention import AttentionProcessorMixin
from .layers.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps, class_embedding
from .unet_2d_blocks import (
    BlockOptions,
    OutputHeadMixin,
    UNetMidBlock2D,
    build_down_blocks,
    build_up_blocks,
)

__all__ = ["UNet2DModel", "UNet2DOutput"]


@dataclasses.dataclass
class UNet2DOutput(BaseOutput):
    """The model's prediction, shaped like the input ``sample``."""

    sample: torch.Tensor


class UNet2DModel(ModelMixin, AttentionProcessorMixin, OutputHeadMixin):
    """A UNet over images conditioned on the timestep (and optionally a class label)."""

    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int | None = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
    ) -> None:
        super().__init__()
        n = len(down_block_types)
        if len(up_block_types) != n or len(block_out_channels) != n:
            raise ValueError(
                f"down_block_types ({n}), up_block_types ({len(up_block_types)}) and block_out_channels "
                f"({len(block_out_channels)}) must have the same length"
            )
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj: nn.Module
        if time_embedding_type == "fourier":
            self.time_proj = GaussianFourierProjection(embedding_size=block_out_channels[0], scale=16)
            timestep_input_dim = 2 * block_out_channels[0]
        elif time_embedding_type == "positional":
            self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
            timestep_input_dim = block_out_channels[0]
        elif time_embedding_type == "learned":
            if num_train_timesteps is None:
                raise ValueError("time_embedding_type='learned' needs num_train_timesteps")
            self.time_proj = nn.Embedding(num_train_timesteps, block_out_channels[0])
            timestep_input_dim = block_out_channels[0]
        else:
            raise ValueError(f"unknown time_embedding_type {time_embedding_type!r}")
        self.time_embedding = TimestepEmbedding(timestep_input_dim, time_embed_dim)
        self.class_embedding = class_embedding(
            class_embed_type,
            num_class_embeds=num_class_embeds,
            timestep_input_dim=timestep_input_dim,
            time_embed_dim=time_embed_dim,
        )

        base = BlockOptions(
            num_layers=layers_per_block,
            temb_channels=time_embed_dim,
            dropout=dropout,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            # ``None`` (score-SDE UNets): the skip blocks pick their own groups, the mid block min(C/4, 32)
            resnet_groups=norm_num_groups if norm_num_groups is not None else min(block_out_channels[-1] // 4, 32),
            resnet_time_scale_shift=resnet_time_scale_shift,
            downsample_padding=downsample_padding,
        )
        self.down_blocks = build_down_blocks(
            down_block_types,
            block_out_channels,
            lambda _, out_ch: dataclasses.replace(base, attention_head_dim=attention_head_dim or out_ch),
            downsample_type=downsample_type,
        )
        self.up_blocks = nn.ModuleList()  # registered before the mid block, built after it (Diffusers' order)
        self.mid_block: nn.Module | None = None
        if mid_block_type is not None:
            if mid_block_type != "UNetMidBlock2D":
                raise ValueError(f"unknown mid_block_type {mid_block_type!r} for UNet2DModel")
            self.mid_block = UNetMidBlock2D(
                block_out_channels[-1],
                dataclasses.replace(
                    base,
                    num_layers=1,
                    output_scale_factor=mid_block_scale_factor,
                    attention_head_dim=attention_head_dim or block_out_channels[-1],
                    attn_groups=attn_norm_num_groups,
                ),
                add_attention=add_attention,
            )
        self.up_blocks.extend(
            build_up_blocks(
                up_block_types,
                block_out_channels,
                lambda _, out_ch: dataclasses.replace(
                    base, num_layers=layers_per_block + 1, attention_head_dim=attention_head_dim or out_ch
                ),
                upsample_type=upsample_type,
            )
        )
        # Diffusers ends this UNet with SiLU whatever act_fn says
        out_groups = norm_num_groups if norm_num_groups is not None else min(block_out_channels[0] // 4, 32)
        self._init_output_head(block_out_channels[0], out_channels, groups=out_groups, eps=norm_eps, act_fn="silu")

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        """Predict from a noisy ``sample`` at ``timestep`` (a noise level for fourier embeddings)."""
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        if not isinstance(timestep, torch.Tensor):
            timesteps = torch.tensor([timestep], dtype=torch.long, device=sample.device)
        else:
            timesteps = timestep[None].to(sample.device) if timestep.ndim == 0 else timestep
        timesteps = timesteps * torch.ones(sample.shape[0], dtype=timesteps.dtype, device=timesteps.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=self.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("this UNet is class-conditional: pass class_labels")
            if self.config.class_embed_type == "timestep":
                class_labels = self.time_proj(class_labels)
            emb = emb + self.class_embedding(class_labels).to(dtype=self.dtype)
        elif class_labels is not None:
            raise ValueError("class_labels were given but this UNet has no class embedding")

        # NCSN++ skip blocks carry an image-resolution skip path beside the features
        skip_sample: torch.Tensor | None = sample
        sample = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.down_blocks:
            if getattr(block, "uses_skip_sample", False):
                sample, states, skip_sample = block(sample, emb, skip_sample)
            else:
                sample, states = block(sample, emb)
            skips += states
        if self.mid_block is not None:
            sample = self.mid_block(sample, emb)
        skip_sample = None
        for block in self.up_blocks:
            n_res = len(block.resnets)  # type: ignore[arg-type]
            res, skips = skips[-n_res:], skips[:-n_res]
            if getattr(block, "uses_skip_sample", False):
                sample, skip_sample = block(sample, res, emb, skip_sample)
            else:
                sample = block(sample, res, emb)
        sample = self._output_head(sample)
        if skip_sample is not None:
            sample = sample + skip_sample
        if self.config.time_embedding_type == "fourier":
            sample = sample / timesteps.reshape(sample.shape[0], *([1] * (sample.ndim - 1)))
        if not return_dict:
            return (sample,)
        return UNet2DOutput(sample=sample)
