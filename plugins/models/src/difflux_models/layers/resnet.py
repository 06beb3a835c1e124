"""Residual blocks: ``ResnetBlock2D`` (UNets, VAEs) and the 1-d temporal block of value-function UNets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .activations import activate_fresh, get_activation, grad_needed, hooked
from .sampling import Downsample2D, Upsample2D

__all__ = ["Conv1dBlock", "ResidualTemporalBlock1D", "ResnetBlock2D", "ResnetBlockCondNorm2D"]


class ResnetBlock2D(nn.Module):
    """GroupNorm-act-conv twice with a timestep embedding in between and a residual path.

    ``time_embedding_norm``: ``"default"`` adds the projected embedding before ``norm2``;
    ``"scale_shift"`` modulates after ``norm2``. ``up`` / ``down`` resample both paths first
    (``kernel``: ``None`` nearest / average pooling, ``"sde_vp"`` the same, ``"fir"`` FIR filters).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        temb_channels: int | None = 512,
        groups: int = 32,
        groups_out: int | None = None,
        pre_norm: bool = True,
        eps: float = 1e-6,
        non_linearity: str = "swish",
        skip_time_act: bool = False,
        time_embedding_norm: str = "default",
        kernel: str | None = None,
        output_scale_factor: float = 1.0,
        use_in_shortcut: bool | None = None,
        up: bool = False,
        down: bool = False,
        conv_shortcut_bias: bool = True,
        conv_2d_out_channels: int | None = None,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.output_scale_factor = output_scale_factor
        self.time_embedding_norm = time_embedding_norm
        self.skip_time_act = skip_time_act
        self.norm1 = nn.GroupNorm(num_groups=groups, num_channels=in_channels, eps=eps, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj: nn.Linear | None
        if temb_channels is None:
            self.time_emb_proj = None
        elif time_embedding_norm == "default":
            self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        elif time_embedding_norm == "scale_shift":
            self.time_emb_proj = nn.Linear(temb_channels, 2 * out_channels)
        else:
            raise ValueError(
                f"unknown time_embedding_norm {time_embedding_norm!r}; expected 'default' or 'scale_shift'"
            )
        self.norm2 = nn.GroupNorm(num_groups=groups_out or groups, num_channels=out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(dropout)
        conv_2d_out = conv_2d_out_channels or out_channels
        self.conv2 = nn.Conv2d(out_channels, conv_2d_out, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(non_linearity)
        self.up, self.down, self.kernel = up, down, kernel
        self.upsample: nn.Module | None = None
        self.downsample: nn.Module | None = None
        if up and kernel not in ("fir", "sde_vp"):
            self.upsample = Upsample2D(in_channels, use_conv=False)
        elif down and kernel not in ("fir", "sde_vp"):
            self.downsample = Downsample2D(in_channels, use_conv=False, padding=1, name="op")
        self.use_in_shortcut = in_channels != conv_2d_out if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = (
            nn.Conv2d(in_channels, conv_2d_out, kernel_size=1, stride=1, padding=0, bias=conv_shortcut_bias)
            if self.use_in_shortcut
            else None
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            if self.kernel == "fir":
                from .fir import upsample_2d

                return upsample_2d(x, kernel=(1, 3, 3, 1))
            if self.kernel == "sde_vp":
                return F.interpolate(x, scale_factor=2.0, mode="nearest")
            if self.upsample is None:
                raise RuntimeError("ResnetBlock2D._resample: internal check failed: self.upsample is not None")
            return self.upsample(x)  # type: ignore[no-any-return]
        if self.kernel == "fir":
            from .fir import downsample_2d

            return downsample_2d(x, kernel=(1, 3, 3, 1))
        if self.kernel == "sde_vp":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.downsample is None:
            raise RuntimeError("ResnetBlock2D._resample: internal check failed: self.downsample is not None")
        return self.downsample(x)  # type: ignore[no-any-return]

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        # Without autograd, the sums and activations overwrite intermediates this block made
        # (same values, fewer large allocations); see activate_fresh.
        h = activate_fresh(self.nonlinearity, self.norm1(input_tensor), self.norm1)
        if self.up or self.down:
            input_tensor = self._resample(input_tensor)
            h = self._resample(h)
        h = self.conv1(h)
        if self.time_emb_proj is not None and temb is not None:
            if not self.skip_time_act:
                temb = self.nonlinearity(temb)
            temb = self.time_emb_proj(temb)[:, :, None, None]
        if self.time_embedding_norm == "scale_shift":
            if temb is None:
                raise ValueError("time_embedding_norm='scale_shift' needs a timestep embedding")
            scale, shift = temb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            if temb is not None:
                h = _add_into(h, temb, self.conv1)
            h = self.norm2(h)
        h = self.conv2(self.dropout(activate_fresh(self.nonlinearity, h, self.norm2)))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        out = _add_into(h, input_tensor, self.conv2)  # input_tensor + h: addition commutes exactly
        if self.output_scale_factor != 1.0:
            # ``out`` is new here either way (the in-place sum happens only when conv2 has no hooks)
            out = out / self.output_scale_factor if grad_needed(out) else out.div_(self.output_scale_factor)
        return out


class ResnetBlockCondNorm2D(nn.Module):
    """Residual block whose two norms are conditioned on an embedding: ``"ada_group"``
    (:class:`~difflux_models.layers.normalization.AdaGroupNorm` on a timestep embedding,
    K-diffusion UNets) or ``"spatial"`` (:class:`~difflux_models.layers.normalization.SpatialNorm`
    on a quantized latent, MoVQ decoders). Keys as Diffusers': ``norm1``, ``conv1``, ``norm2``,
    ``conv2``, optional ``conv_shortcut``.

    ``forward(input_tensor (B, C_in, H, W), temb)`` -> ``(B, C_out, H', W')``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        temb_channels: int = 512,
        groups: int = 32,
        groups_out: int | None = None,
        eps: float = 1e-6,
        non_linearity: str = "swish",
        time_embedding_norm: str = "ada_group",
        output_scale_factor: float = 1.0,
        use_in_shortcut: bool | None = None,
        up: bool = False,
        down: bool = False,
        conv_shortcut_bias: bool = True,
        conv_2d_out_channels: int | None = None,
    ) -> None:
        super().__init__()
        from .normalization import AdaGroupNorm, SpatialNorm

        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.output_scale_factor = output_scale_factor
        self.time_embedding_norm = time_embedding_norm

        def norm(channels: int, n_groups: int) -> nn.Module:
            if time_embedding_norm == "ada_group":
                return AdaGroupNorm(temb_channels, channels, n_groups, eps=eps)
            if time_embedding_norm == "spatial":
                return SpatialNorm(channels, temb_channels)
            raise ValueError(f"unknown time_embedding_norm {time_embedding_norm!r}; expected 'ada_group' or 'spatial'")

        self.norm1 = norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = norm(out_channels, groups_out if groups_out is not None else groups)
        self.dropout = nn.Dropout(dropout)
        conv_2d_out = conv_2d_out_channels or out_channels
        self.conv2 = nn.Conv2d(out_channels, conv_2d_out, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = get_activation(non_linearity)
        self.upsample: nn.Module | None = Upsample2D(in_channels, use_conv=False) if up else None
        self.downsample: nn.Module | None = (
            Downsample2D(in_channels, use_conv=False, padding=1, name="op") if down and not up else None
        )
        self.use_in_shortcut = in_channels != conv_2d_out if use_in_shortcut is None else use_in_shortcut
        self.conv_shortcut = (
            nn.Conv2d(in_channels, conv_2d_out, kernel_size=1, stride=1, padding=0, bias=conv_shortcut_bias)
            if self.use_in_shortcut
            else None
        )

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.nonlinearity(self.norm1(input_tensor, temb))
        for resample in (self.upsample, self.downsample):
            if resample is not None:
                input_tensor, h = resample(input_tensor), resample(h)
        h = self.conv1(h)
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h, temb))))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor)
        out: torch.Tensor = input_tensor + h
        return out / self.output_scale_factor if self.output_scale_factor != 1.0 else out


def _add_into(fresh: torch.Tensor, other: torch.Tensor, source: nn.Module) -> torch.Tensor:
    """``fresh + other``, written into ``fresh`` (what ``source`` just returned, held by nothing
    else) when that gives the same tensor: no autograd, no hooks on ``source``, ``other``
    broadcasts to ``fresh``'s shape, and the dtypes agree."""
    if (
        hooked(source)
        or grad_needed(fresh)
        or grad_needed(other)
        or fresh.dtype != other.dtype
        or not _broadcasts_to(other.shape, fresh.shape)
    ):
        return fresh + other
    return fresh.add_(other)


def _broadcasts_to(small: torch.Size, big: torch.Size) -> bool:
    """Whether a tensor of shape ``small`` broadcasts to ``big`` unchanged (a plain-Python check:
    ``torch.broadcast_shapes`` costs more than the small additions it guards)."""
    return len(small) <= len(big) and all(s in (1, b) for s, b in zip(reversed(small), reversed(big)))


def _rearrange_dims(t: torch.Tensor) -> torch.Tensor:
    if t.ndim == 2:
        return t[:, :, None]
    if t.ndim == 3:
        return t[:, :, None, :]
    if t.ndim == 4:
        return t[:, :, 0, :]
    raise ValueError(f"expected a 2-, 3- or 4-d tensor, got {t.ndim}-d")


class Conv1dBlock(nn.Module):
    """``Conv1d`` then GroupNorm then Mish (keys ``conv1d``, ``group_norm``)."""

    def __init__(
        self, inp_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8, activation: str = "mish"
    ) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(inp_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.group_norm = nn.GroupNorm(n_groups, out_channels)
        self.mish = get_activation(activation)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.conv1d(inputs)
        x = _rearrange_dims(self.group_norm(_rearrange_dims(x)))
        return self.mish(x)  # type: ignore[no-any-return]


class ResidualTemporalBlock1D(nn.Module):
    """Two :class:`Conv1dBlock` with a time embedding added between them, plus a residual."""

    def __init__(
        self, inp_channels: int, out_channels: int, embed_dim: int, kernel_size: int = 5, activation: str = "mish"
    ) -> None:
        super().__init__()
        self.conv_in = Conv1dBlock(inp_channels, out_channels, kernel_size)
        self.conv_out = Conv1dBlock(out_channels, out_channels, kernel_size)
        self.time_emb_act = get_activation(activation)
        self.time_emb = nn.Linear(embed_dim, out_channels)
        self.residual_conv: nn.Module = (
            nn.Conv1d(inp_channels, out_channels, 1) if inp_channels != out_channels else nn.Identity()
        )

    def forward(self, inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = self.time_emb(self.time_emb_act(t))
        out = self.conv_in(inputs) + _rearrange_dims(t)
        out = self.conv_out(out)
        return out + self.residual_conv(inputs)  # type: ignore[no-any-return]
