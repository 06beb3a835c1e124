"""``ControlNetUnionModel`` and ``MultiControlNetUnionModel``: one ControlNet for several condition types.

ControlNet++ / ControlNet-Union (xinsir, ``controlnet-union-sdxl-1.0``; Diffusers' format) is an SDXL
ControlNet that takes one or more condition images at once, each tagged with a *control mode*
(for the published checkpoint: 0 openpose, 1 depth, 2 hed/pidi/scribble/ted, 3 canny/lineart/
anime lineart/mlsd, 4 normal, 5 segment; 6 tile and 7 repaint in the ProMax version). Each condition
image goes through the shared conditioning embedding; its spatial mean plus a learnt task embedding
of its mode becomes a token, and a small transformer over those tokens (and one of the latent input)
gives a per-channel offset that is added to that condition's features. The fused features join the
latent input of an ordinary ControlNet encoder, and the set of active modes (a multi-hot vector)
adds a sinusoidal embedding to the time embedding.

Config keys and state-dict keys are Diffusers' (including the published spelling
``transformer_layes``), so published Union folders load as they are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from difflux_models.layers.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from .controlnet import ControlNetModel, ControlNetOutput, unet_encoder_config
from .multicontrolnet import MultiControlNetModel

__all__ = ["ControlNetUnionModel", "MultiControlNetUnionModel"]


class _QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the GELU approximation of CLIP (Hendrycks and Gimpel 2016)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Mlp(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, width * 4)
        self.gelu = _QuickGELU()
        self.c_proj = nn.Linear(width * 4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.c_proj(self.gelu(self.c_fc(x)))
        return out


class ResidualAttentionBlock(nn.Module):
    """A pre-norm transformer block (CLIP's): ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``.

    As in the published checkpoints, ``nn.MultiheadAttention`` runs sequence-first, so on the
    ``(batch, tokens, width)`` input of the Union model it attends across the *batch* axis for each
    token position. This is the published behaviour, kept so that outputs match.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = _Mlp(width)
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        out: torch.Tensor = x + self.mlp(self.ln_2(x))
        return out


def _zero_linear(width_in: int, width_out: int) -> nn.Linear:
    layer = nn.Linear(width_in, width_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ControlNetUnionModel(ControlNetModel):
    """A Union ControlNet (Diffusers' ``ControlNetUnionModel`` format); see the module docstring.

    The config is :class:`ControlNetModel`'s without ``mid_block_type`` (always
    ``UNetMidBlock2DCrossAttn``) and ``encoder_hid_dim_type`` (must be ``None``), plus
    ``num_control_type`` (how many control modes), ``num_trans_channel`` / ``num_trans_head`` /
    ``num_trans_layer`` (the token transformer) and ``num_proj_channel`` (its output width, which
    must equal ``block_out_channels[0]``). ``addition_time_embed_dim`` is required: the control-mode
    vector is embedded with it.

    :raises ValueError: for a config Diffusers' Union model cannot build either (an
        ``encoder_hid_dim_type``, a ``bgr`` channel order, no ``addition_time_embed_dim``, a
        projection width that differs from ``block_out_channels[0]``).
    """

    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: int | None = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (48, 96, 192, 384),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
        num_control_type: int = 6,
        num_trans_channel: int = 320,
        num_trans_head: int = 8,
        num_trans_layer: int = 1,
        num_proj_channel: int = 320,
    ) -> None:
        if encoder_hid_dim_type is not None:
            raise ValueError(
                f"ControlNetUnionModel: encoder_hid_dim_type must be None (Union nets have no encoder projection), "
                f"got {encoder_hid_dim_type!r}"
            )
        if controlnet_conditioning_channel_order != "rgb":
            raise ValueError(
                "ControlNetUnionModel: controlnet_conditioning_channel_order must be 'rgb', "
                f"got {controlnet_conditioning_channel_order!r}"
            )
        if addition_time_embed_dim is None:
            raise ValueError("ControlNetUnionModel needs addition_time_embed_dim (it embeds the control-mode vector)")
        if num_proj_channel != block_out_channels[0]:
            raise ValueError(
                f"ControlNetUnionModel: num_proj_channel ({num_proj_channel}) must equal block_out_channels[0] "
                f"({block_out_channels[0]}): its output offsets the condition features"
            )
        if num_trans_head < 1 or num_trans_channel % num_trans_head:
            raise ValueError(
                f"ControlNetUnionModel: num_trans_channel ({num_trans_channel}) must be a multiple of num_trans_head "
                f"({num_trans_head})"
            )
        if num_control_type < 1:
            raise ValueError(f"ControlNetUnionModel: num_control_type must be at least 1, got {num_control_type}")
        super().__init__(
            in_channels=in_channels,
            conditioning_channels=conditioning_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            down_block_types=down_block_types,
            mid_block_type="UNetMidBlock2DCrossAttn",
            only_cross_attention=only_cross_attention,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            use_linear_projection=use_linear_projection,
            class_embed_type=class_embed_type,
            addition_embed_type=addition_embed_type,
            addition_time_embed_dim=addition_time_embed_dim,
            num_class_embeds=num_class_embeds,
            upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            global_pool_conditions=global_pool_conditions,
            addition_embed_type_num_heads=addition_embed_type_num_heads,
        )
        time_embed_dim = block_out_channels[0] * 4
        self.task_embedding = nn.Parameter(num_trans_channel**0.5 * torch.randn(num_control_type, num_trans_channel))
        self.transformer_layes = nn.ModuleList(
            [ResidualAttentionBlock(num_trans_channel, num_trans_head) for _ in range(num_trans_layer)]
        )
        self.spatial_ch_projs = _zero_linear(num_trans_channel, num_proj_channel)
        self.control_type_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
        self.control_add_embedding = TimestepEmbedding(addition_time_embed_dim * num_control_type, time_embed_dim)

    @classmethod
    def from_unet(  # type: ignore[override]
        cls,
        unet: Any,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
    ) -> ControlNetUnionModel:
        """A Union ControlNet with ``unet``'s (an SDXL UNet's) encoder layout and, by default, its
        encoder weights (the Union parts start fresh; the token projection starts at zero). The token
        transformer is ``block_out_channels[0]`` wide with ``gcd(8, width)`` heads (8 for SDXL).

        :raises ValueError: for a UNet without ``addition_time_embed_dim`` (not an SDXL-style UNet).
        """
        c = unet.config
        controlnet = cls(
            **unet_encoder_config(c),
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            num_proj_channel=c.block_out_channels[0],
            num_trans_channel=c.block_out_channels[0],
            num_trans_head=math.gcd(8, c.block_out_channels[0]),
        )
        if load_weights_from_unet:
            for name in ("conv_in", "time_proj", "time_embedding"):
                getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict())
            if controlnet.class_embedding is not None:
                controlnet.class_embedding.load_state_dict(unet.class_embedding.state_dict())
            controlnet.down_blocks.load_state_dict(unet.down_blocks.state_dict(), strict=False)
            if controlnet.mid_block is not None:
                controlnet.mid_block.load_state_dict(unet.mid_block.state_dict(), strict=False)
        return controlnet

    def control_type(self, modes: Sequence[int], batch: int, *, device: Any = None, dtype: Any = None) -> torch.Tensor:
        """The multi-hot ``(batch, num_control_type)`` vector of the active ``modes``.

        :raises ValueError: for a mode outside ``0 .. num_control_type - 1``.
        """
        count = int(self.config.num_control_type)
        bad = [m for m in modes if not 0 <= m < count]
        if bad:
            raise ValueError(f"ControlNetUnionModel: control modes must lie in 0..{count - 1}, got {bad}")
        vector = torch.zeros(count)
        vector[list(modes)] = 1.0
        return vector.to(device=device, dtype=dtype).expand(batch, count)

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: Sequence[torch.Tensor],
        control_type: torch.Tensor,
        control_type_idx: Sequence[int],
        conditioning_scale: float | Sequence[float] = 1.0,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        from_multi: bool = False,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> ControlNetOutput | tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The control residuals for ``sample`` ``(batch, in_channels, h, w)`` from several condition images.

        :param controlnet_cond: one condition image per mode, each ``(batch, 3, 8h, 8w)`` in ``[0, 1]``
            (published layout).
        :param control_type: ``(batch, num_control_type)`` multi-hot vector of the active modes
            (:meth:`control_type`).
        :param control_type_idx: the mode of each condition image (an index into the task embedding).
        :param conditioning_scale: a number or one per condition image. With one image (or
            ``from_multi``) it scales the residuals at the end, as :class:`ControlNetModel` does; with
            several it weighs each condition's features and token instead, and the residuals are
            not scaled again.
        :param guess_mode: log-spaced residual scales from 0.1 to 1.0 across depth.
        :returns: :class:`ControlNetOutput` (or the tuple ``(down_block_res_samples, mid_block_res_sample)``).
        :raises ValueError: when ``controlnet_cond`` and ``control_type_idx`` differ in length.
        """
        conds = list(controlnet_cond)
        if len(conds) != len(control_type_idx):
            raise ValueError(
                f"ControlNetUnionModel: {len(conds)} condition images but {len(control_type_idx)} control modes; "
                "give one mode per image"
            )
        if isinstance(conditioning_scale, (int, float)):
            scales = [float(conditioning_scale)] * len(conds)
        else:
            scales = [float(s) for s in conditioning_scale]
        late = from_multi or len(control_type_idx) == 1  # scale the residuals, not the conditions
        if attention_mask is not None:
            attention_mask = ((1 - attention_mask.to(sample.dtype)) * -10000.0).unsqueeze(1)

        def add_control_type(emb: torch.Tensor) -> torch.Tensor:
            embeds = self.control_type_proj(control_type.flatten()).reshape(sample.shape[0], -1).to(emb.dtype)
            out: torch.Tensor = emb + self.control_add_embedding(embeds)
            return out

        emb = self._embedding(
            sample, timestep, encoder_hidden_states, timestep_cond, class_labels, added_cond_kwargs, add_control_type
        )
        sample = self.conv_in(sample)
        tokens, features = [], []
        for cond, mode, scale in zip(conds, control_type_idx, scales, strict=False):
            feature = self.controlnet_cond_embedding(cond)
            token = (feature.mean(dim=(2, 3)) + self.task_embedding[mode]).unsqueeze(1)
            tokens.append(token if late else token * scale)
            features.append(feature if late else feature * scale)
        tokens.append(sample.mean(dim=(2, 3)).unsqueeze(1))
        x = torch.cat(tokens, dim=1)
        for layer in self.transformer_layes:
            x = layer(x)
        fused = sample * 0.0
        for k, (feature, scale) in enumerate(zip(features, scales, strict=False)):
            alpha = self.spatial_ch_projs(x[:, k])[:, :, None, None]
            fused = fused + feature + (alpha if late else alpha * scale)
        sample = sample + fused

        down, mid = self._encode(sample, emb, encoder_hidden_states, attention_mask, cross_attention_kwargs)
        down, mid = self._scale(down, mid, scales[0] if late else 1.0, guess_mode)
        if not return_dict:
            return (tuple(down), mid)
        return ControlNetOutput(down_block_res_samples=tuple(down), mid_block_res_sample=mid)


class MultiControlNetUnionModel(MultiControlNetModel):
    """Several Union ControlNets whose residuals add up; each takes its own condition images and modes.

    Saved as ``<dir>``, ``<dir>_1`` ... (in a pipeline ``controlnet``, ``controlnet_1`` ...), as Diffusers does.

    :raises ValueError: when ``controlnets`` is empty or holds something other than a ControlNetUnionModel.
    """

    net_class = ControlNetUnionModel

    def __init__(self, controlnets: Sequence[ControlNetUnionModel]) -> None:
        super().__init__(controlnets)

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: Sequence[Sequence[torch.Tensor]],
        control_type: Sequence[torch.Tensor],
        control_type_idx: Sequence[Sequence[int]],
        conditioning_scale: Sequence[float],
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> tuple[list[torch.Tensor] | None, torch.Tensor | None]:
        """The summed residuals ``(down_block_res_samples, mid_block_res_sample)`` of the nets whose scale
        is not 0 (``(None, None)`` when every scale is 0). Each argument holds one entry per net, as
        :meth:`ControlNetUnionModel.forward` takes it; each net scales its own residuals.

        :raises ValueError: when a list's length differs from the number of nets.
        """
        n = len(self.nets)
        lengths = {len(controlnet_cond), len(control_type), len(control_type_idx), len(conditioning_scale)}
        if lengths != {n}:
            raise ValueError(
                f"MultiControlNetUnionModel has {n} nets; pass one condition list, control type, mode list and "
                "scale per net"
            )
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        for image, kind, modes, scale, net in zip(
            controlnet_cond, control_type, control_type_idx, conditioning_scale, self.nets, strict=True
        ):
            if scale == 0.0:
                continue
            d, m = net(
                sample,
                timestep,
                encoder_hidden_states,
                image,
                kind,
                modes,
                conditioning_scale=scale,
                class_labels=class_labels,
                timestep_cond=timestep_cond,
                attention_mask=attention_mask,
                added_cond_kwargs=added_cond_kwargs,
                cross_attention_kwargs=cross_attention_kwargs,
                from_multi=True,
                guess_mode=guess_mode,
                return_dict=False,
            )
            if down is None or mid is None:
                down, mid = list(d), m
            else:
                down = [a + b for a, b in zip(down, d, strict=True)]
                mid = mid + m
        return down, mid
