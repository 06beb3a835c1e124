"""Blocks of :class:`~difflux_models.unet_1d.UNet1DModel`.

Two families share this module:

* the Dance Diffusion blocks (``DownBlock1D``, ``AttnDownBlock1D``, ``UNetMidBlock1D`` …): a
  stack of :class:`ResConvBlock` (optionally each followed by a :class:`SelfAttention1d`),
  resampled with fixed (non-learned) FIR kernels;
* the temporal blocks of the RL value function / planner (``DownResnetBlock1D``,
  ``MidResTemporalBlock1D`` …) built from ``ResidualTemporalBlock1D`` and strided convolutions.

The block type strings and the state-dict layout are the Diffusers ones; :func:`get_down_block`
and friends build a block from its type string.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from difflux.attention import attention
from torch import nn

from .layers.activations import get_activation
from .layers.resnet import ResidualTemporalBlock1D
from .layers.sampling import Downsample1D, Upsample1D

__all__ = [
    "AttnDownBlock1D",
    "AttnUpBlock1D",
    "DownBlock1D",
    "DownBlock1DNoSkip",
    "DownResnetBlock1D",
    "Downsample1d",
    "MidResTemporalBlock1D",
    "OutConv1DBlock",
    "OutValueFunctionBlock",
    "ResConvBlock",
    "SelfAttention1d",
    "UNetMidBlock1D",
    "UpBlock1D",
    "UpBlock1DNoSkip",
    "UpResnetBlock1D",
    "Upsample1d",
    "ValueFunctionMidBlock1D",
    "get_down_block",
    "get_mid_block",
    "get_out_block",
    "get_up_block",
]

# -- fixed-kernel resampling (Dance Diffusion) ------------------------------------------------

#: Half-band FIR kernels for resampling by two, by name.
RESAMPLE_KERNELS: dict[str, tuple[float, ...]] = {
    "linear": (1 / 8, 3 / 8, 3 / 8, 1 / 8),
    "cubic": (-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875),
    "lanczos3": (
        0.003689131001010537,
        0.015056144446134567,
        -0.03399861603975296,
        -0.066637322306633,
        0.13550527393817902,
        0.44638532400131226,
        0.44638532400131226,
        0.13550527393817902,
        -0.066637322306633,
        -0.03399861603975296,
        0.015056144446134567,
        0.003689131001010537,
    ),
}


def _depthwise_weight(kernel: torch.Tensor, channels: int, like: torch.Tensor) -> torch.Tensor:
    """A ``(channels, channels, k)`` weight that applies ``kernel`` to each channel separately."""
    weight = like.new_zeros((channels, channels, kernel.shape[0]))
    idx = torch.arange(channels, device=like.device)
    weight[idx, idx] = kernel.to(weight)[None, :].expand(channels, -1)
    return weight


class _KernelResample1d(nn.Module):
    """Holds a resampling kernel as the (persistent) buffer ``kernel``."""

    kernel: torch.Tensor

    def __init__(self, kernel: str, pad_mode: str, gain: float) -> None:
        super().__init__()
        if kernel not in RESAMPLE_KERNELS:
            raise ValueError(f"unknown resampling kernel {kernel!r}; expected one of {sorted(RESAMPLE_KERNELS)}")
        self.pad_mode = pad_mode
        taps = torch.tensor(RESAMPLE_KERNELS[kernel]) * gain
        self.pad = taps.shape[0] // 2 - 1
        self.register_buffer("kernel", taps)


class Downsample1d(_KernelResample1d):
    """Halve the length: pad, low-pass each channel with the kernel, keep every second sample."""

    def __init__(self, kernel: str = "linear", pad_mode: str = "reflect") -> None:
        super().__init__(kernel, pad_mode, gain=1.0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = F.pad(hidden_states, (self.pad, self.pad), self.pad_mode)
        weight = _depthwise_weight(self.kernel, hidden_states.shape[1], hidden_states)
        return F.conv1d(hidden_states, weight, stride=2)


class Upsample1d(_KernelResample1d):
    """Double the length: a strided transposed convolution with the (doubled) kernel."""

    def __init__(self, kernel: str = "linear", pad_mode: str = "reflect") -> None:
        super().__init__(kernel, pad_mode, gain=2.0)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        edge = (self.pad + 1) // 2
        hidden_states = F.pad(hidden_states, (edge, edge), self.pad_mode)
        weight = _depthwise_weight(self.kernel, hidden_states.shape[1], hidden_states)
        return F.conv_transpose1d(hidden_states, weight, stride=2, padding=self.pad * 2 + 1)


# -- Dance Diffusion residual / attention units -----------------------------------------------


class SelfAttention1d(nn.Module):
    """Multi-head self-attention over the length axis, with a residual; keys ``query``/``key``/``value``."""

    def __init__(self, in_channels: int, n_head: int = 1, dropout_rate: float = 0.0) -> None:
        super().__init__()
        if n_head < 1 or in_channels % n_head:
            raise ValueError(
                f"SelfAttention1d: {in_channels} channels cannot be split into {n_head} heads "
                "(Dance Diffusion attention blocks use channels // 32 heads, so need at least 32 channels)"
            )
        self.channels = in_channels
        self.num_heads = n_head
        self.group_norm = nn.GroupNorm(1, num_channels=in_channels)
        self.query = nn.Linear(in_channels, in_channels)
        self.key = nn.Linear(in_channels, in_channels)
        self.value = nn.Linear(in_channels, in_channels)
        self.proj_attn = nn.Linear(in_channels, in_channels, bias=True)
        self.dropout = nn.Dropout(dropout_rate)
        self.attention_backend: str | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.num_heads, -1).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states
        batch, channels, seq = hidden_states.shape
        x = self.group_norm(hidden_states).transpose(1, 2)
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        out = attention(q, k, v, scale=1.0 / math.sqrt(q.shape[-1]), backend=self.attention_backend)
        out = out.transpose(1, 2).reshape(batch, seq, channels)
        out = self.proj_attn(out).transpose(1, 2)
        result: torch.Tensor = self.dropout(out) + residual
        return result


class ResConvBlock(nn.Module):
    """Two width-5 convolutions with GroupNorm(1) + GELU, plus a (1x1-projected if needed) skip."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, is_last: bool = False) -> None:
        super().__init__()
        self.is_last = is_last
        self.has_conv_skip = in_channels != out_channels
        if self.has_conv_skip:
            self.conv_skip = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.conv_1 = nn.Conv1d(in_channels, mid_channels, 5, padding=2)
        self.group_norm_1 = nn.GroupNorm(1, mid_channels)
        self.gelu_1 = nn.GELU()
        self.conv_2 = nn.Conv1d(mid_channels, out_channels, 5, padding=2)
        if not is_last:
            self.group_norm_2 = nn.GroupNorm(1, out_channels)
            self.gelu_2 = nn.GELU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = self.conv_skip(hidden_states) if self.has_conv_skip else hidden_states
        hidden_states = self.conv_2(self.gelu_1(self.group_norm_1(self.conv_1(hidden_states))))
        if not self.is_last:
            hidden_states = self.gelu_2(self.group_norm_2(hidden_states))
        return hidden_states + residual


class _ResConvStack1D(nn.Module):
    """``ResConvBlock`` s from ``in`` through ``mid`` to ``out`` channels, each optionally followed by attention.

    The common body of every Dance Diffusion block; subclasses add resampling and skip handling.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        *,
        num_resnets: int = 3,
        with_attention: bool = False,
        last_is_final: bool = False,
        before: Sequence[tuple[str, nn.Module]] = (),
        after: Sequence[tuple[str, nn.Module]] = (),
    ) -> None:
        super().__init__()
        widths = [in_channels] + [mid_channels] * (num_resnets - 1) + [out_channels]
        resnets = [
            ResConvBlock(widths[i], mid_channels, widths[i + 1], is_last=last_is_final and i == num_resnets - 1)
            for i in range(num_resnets)
        ]
        # Diffusers' registration order: ``before`` (a resampler), attentions, resnets, ``after``
        for name, module in before:
            self.add_module(name, module)
        if with_attention:
            self.attentions = nn.ModuleList(
                SelfAttention1d(widths[i + 1], widths[i + 1] // 32) for i in range(num_resnets)
            )
        self.resnets = nn.ModuleList(resnets)
        for name, module in after:
            self.add_module(name, module)

    def _run_stack(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attentions = getattr(self, "attentions", None)
        for i, resnet in enumerate(self.resnets):
            hidden_states = resnet(hidden_states)
            if attentions is not None:
                hidden_states = attentions[i](hidden_states)
        return hidden_states


class _DownStack1D(_ResConvStack1D):
    """Down block: optional cubic downsample (or time-embedding concatenation), then the stack."""

    def __init__(
        self,
        out_channels: int,
        in_channels: int,
        mid_channels: int | None = None,
        *,
        with_attention: bool,
        downsample: bool,
    ) -> None:
        mid = out_channels if mid_channels is None else mid_channels
        before = [("down", Downsample1d("cubic"))] if downsample else []
        super().__init__(in_channels, mid, out_channels, with_attention=with_attention, before=before)

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        down = getattr(self, "down", None)
        if down is not None:
            hidden_states = down(hidden_states)
        else:  # the first block sees the input with the time features appended as channels
            if temb is None:
                raise ValueError(f"{type(self).__name__} needs the time embedding `temb`")
            hidden_states = torch.cat([hidden_states, temb], dim=1)
        hidden_states = self._run_stack(hidden_states)
        return hidden_states, (hidden_states,)


class DownBlock1D(_DownStack1D):
    def __init__(self, out_channels: int, in_channels: int, mid_channels: int | None = None) -> None:
        super().__init__(out_channels, in_channels, mid_channels, with_attention=False, downsample=True)


class AttnDownBlock1D(_DownStack1D):
    def __init__(self, out_channels: int, in_channels: int, mid_channels: int | None = None) -> None:
        super().__init__(out_channels, in_channels, mid_channels, with_attention=True, downsample=True)


class DownBlock1DNoSkip(_DownStack1D):
    def __init__(self, out_channels: int, in_channels: int, mid_channels: int | None = None) -> None:
        super().__init__(out_channels, in_channels, mid_channels, with_attention=False, downsample=False)


class _UpStack1D(_ResConvStack1D):
    """Up block: concatenate the skip, run the stack, optional cubic upsample."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int,
        *,
        with_attention: bool,
        upsample: bool,
    ) -> None:
        super().__init__(
            2 * in_channels,
            mid_channels,
            out_channels,
            with_attention=with_attention,
            last_is_final=not upsample,
            after=[("up", Upsample1d(kernel="cubic"))] if upsample else [],
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...],
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden_states = torch.cat([hidden_states, res_hidden_states_tuple[-1]], dim=1)
        hidden_states = self._run_stack(hidden_states)
        up = getattr(self, "up", None)
        return up(hidden_states) if up is not None else hidden_states


class AttnUpBlock1D(_UpStack1D):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        mid = out_channels if mid_channels is None else mid_channels
        super().__init__(in_channels, out_channels, mid, with_attention=True, upsample=True)


class UpBlock1D(_UpStack1D):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        mid = in_channels if mid_channels is None else mid_channels
        super().__init__(in_channels, out_channels, mid, with_attention=False, upsample=True)


class UpBlock1DNoSkip(_UpStack1D):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        mid = in_channels if mid_channels is None else mid_channels
        super().__init__(in_channels, out_channels, mid, with_attention=False, upsample=False)


class UNetMidBlock1D(_ResConvStack1D):
    """Downsample, six residual + attention units, upsample."""

    down: nn.Module
    up: nn.Module

    def __init__(self, mid_channels: int, in_channels: int, out_channels: int | None = None) -> None:
        out = in_channels if out_channels is None else out_channels
        super().__init__(
            in_channels,
            mid_channels,
            out,
            num_resnets=6,
            with_attention=True,
            before=[("down", Downsample1d("cubic")), ("up", Upsample1d(kernel="cubic"))],
        )

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        out: torch.Tensor = self.up(self._run_stack(self.down(hidden_states)))
        return out


# -- temporal (RL planner / value function) blocks --------------------------------------------


def _optional_activation(name: str | None) -> nn.Module | None:
    return None if name is None else get_activation(name)


def _temporal_resnets(in_channels: int, out_channels: int, embed_dim: int, num_layers: int) -> nn.ModuleList:
    """One ``in -> out`` temporal resnet followed by ``num_layers`` ``out -> out`` ones."""
    return nn.ModuleList(
        [ResidualTemporalBlock1D(in_channels, out_channels, embed_dim=embed_dim)]
        + [ResidualTemporalBlock1D(out_channels, out_channels, embed_dim=embed_dim) for _ in range(num_layers)]
    )


def _run_temporal(resnets: nn.ModuleList, hidden_states: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
    for resnet in resnets:
        hidden_states = resnet(hidden_states, temb)
    return hidden_states


class DownResnetBlock1D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        num_layers: int = 1,
        conv_shortcut: bool = False,
        temb_channels: int = 32,
        groups: int = 32,
        groups_out: int | None = None,
        non_linearity: str | None = None,
        time_embedding_norm: str = "default",
        output_scale_factor: float = 1.0,
        add_downsample: bool = True,
    ) -> None:
        super().__init__()
        out = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out
        self.resnets = _temporal_resnets(in_channels, out, temb_channels, num_layers)
        self.nonlinearity = _optional_activation(non_linearity)
        self.downsample = Downsample1D(out, use_conv=True, padding=1) if add_downsample else None

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        hidden_states = _run_temporal(self.resnets, hidden_states, temb)
        skips = (hidden_states,)
        if self.nonlinearity is not None:
            hidden_states = self.nonlinearity(hidden_states)
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        return hidden_states, skips


class UpResnetBlock1D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        num_layers: int = 1,
        temb_channels: int = 32,
        groups: int = 32,
        groups_out: int | None = None,
        non_linearity: str | None = None,
        time_embedding_norm: str = "default",
        output_scale_factor: float = 1.0,
        add_upsample: bool = True,
    ) -> None:
        super().__init__()
        out = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out
        self.resnets = _temporal_resnets(2 * in_channels, out, temb_channels, num_layers)
        self.nonlinearity = _optional_activation(non_linearity)
        self.upsample = Upsample1D(out, use_conv_transpose=True) if add_upsample else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        res_hidden_states_tuple: tuple[torch.Tensor, ...] | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if res_hidden_states_tuple is not None:
            hidden_states = torch.cat((hidden_states, res_hidden_states_tuple[-1]), dim=1)
        hidden_states = _run_temporal(self.resnets, hidden_states, temb)
        if self.nonlinearity is not None:
            hidden_states = self.nonlinearity(hidden_states)
        if self.upsample is not None:
            hidden_states = self.upsample(hidden_states)
        return hidden_states


class ValueFunctionMidBlock1D(nn.Module):
    """Two temporal resnets, each halving the channels, each followed by a strided conv."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.embed_dim = in_channels, out_channels, embed_dim
        self.res1 = ResidualTemporalBlock1D(in_channels, in_channels // 2, embed_dim=embed_dim)
        self.down1 = Downsample1D(out_channels // 2, use_conv=True)
        self.res2 = ResidualTemporalBlock1D(in_channels // 2, in_channels // 4, embed_dim=embed_dim)
        self.down2 = Downsample1D(out_channels // 4, use_conv=True)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        x = self.down1(self.res1(x, temb))
        return self.down2(self.res2(x, temb))  # type: ignore[no-any-return]


class MidResTemporalBlock1D(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        embed_dim: int,
        num_layers: int = 1,
        add_downsample: bool = False,
        add_upsample: bool = False,
        non_linearity: str | None = None,
    ) -> None:
        super().__init__()
        if add_downsample and add_upsample:
            raise ValueError("MidResTemporalBlock1D cannot both downsample and upsample")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resnets = _temporal_resnets(in_channels, out_channels, embed_dim, num_layers)
        self.nonlinearity = _optional_activation(non_linearity)
        self.upsample = Upsample1D(out_channels, use_conv=True) if add_upsample else None
        self.downsample = Downsample1D(out_channels, use_conv=True) if add_downsample else None

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        hidden_states = _run_temporal(self.resnets, hidden_states, temb)
        if self.upsample is not None:
            hidden_states = self.upsample(hidden_states)
        if self.downsample is not None:
            hidden_states = self.downsample(hidden_states)
        return hidden_states


class OutConv1DBlock(nn.Module):
    def __init__(self, num_groups_out: int, out_channels: int, embed_dim: int, act_fn: str) -> None:
        super().__init__()
        self.final_conv1d_1 = nn.Conv1d(embed_dim, embed_dim, 5, padding=2)
        self.final_conv1d_gn = nn.GroupNorm(num_groups_out, embed_dim)
        self.final_conv1d_act = get_activation(act_fn)
        self.final_conv1d_2 = nn.Conv1d(embed_dim, out_channels, 1)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.final_conv1d_gn(self.final_conv1d_1(hidden_states))
        return self.final_conv1d_2(self.final_conv1d_act(hidden_states))  # type: ignore[no-any-return]


class OutValueFunctionBlock(nn.Module):
    def __init__(self, fc_dim: int, embed_dim: int, act_fn: str = "mish") -> None:
        super().__init__()
        self.final_block = nn.ModuleList(
            [nn.Linear(fc_dim + embed_dim, fc_dim // 2), get_activation(act_fn), nn.Linear(fc_dim // 2, 1)]
        )

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        hidden_states = torch.cat((hidden_states.reshape(hidden_states.shape[0], -1), temb), dim=-1)
        for layer in self.final_block:
            hidden_states = layer(hidden_states)
        return hidden_states


# -- factories keyed by the Diffusers block type strings --------------------------------------

DownBlock = DownResnetBlock1D | DownBlock1D | AttnDownBlock1D | DownBlock1DNoSkip
UpBlock = UpResnetBlock1D | UpBlock1D | AttnUpBlock1D | UpBlock1DNoSkip
MidBlock = MidResTemporalBlock1D | ValueFunctionMidBlock1D | UNetMidBlock1D
OutBlock = OutConv1DBlock | OutValueFunctionBlock

_B = TypeVar("_B", bound=nn.Module)
#: a down / up block from ``(in_channels, out_channels, num_layers, temb_channels, add_down/upsample)``
_Builder = Callable[[int, int, int, int, bool], _B]


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    return ValueError(f"unknown 1D {kind} block type {name!r}; expected one of {sorted(known)}")


def _build(
    kind: str,
    builders: Mapping[str, _Builder[_B]],
    block_type: str,
    in_channels: int,
    out_channels: int,
    num_layers: int,
    temb_channels: int,
    add_resample: bool,
) -> _B:
    """The block of type ``block_type`` from ``builders``.

    :raises ValueError: for a type ``builders`` lacks, naming the ones it has.
    """
    if block_type not in builders:
        raise _unknown(kind, block_type, list(builders))
    return builders[block_type](in_channels, out_channels, num_layers, temb_channels, add_resample)


def _dance(block: Callable[..., _B]) -> _Builder[_B]:
    """A Dance Diffusion block: built from the channels alone (its depth and resampling are fixed)."""
    return lambda in_channels, out_channels, *_: block(in_channels=in_channels, out_channels=out_channels)


def _temporal(block: Callable[..., _B], add_resample: str) -> _Builder[_B]:
    """A temporal (RL) block: all of the builder's arguments, the last as ``add_resample``."""
    return lambda i, o, n, t, add: block(
        in_channels=i, num_layers=n, out_channels=o, temb_channels=t, **{add_resample: add}
    )


def get_down_block(
    down_block_type: str, num_layers: int, in_channels: int, out_channels: int, temb_channels: int, add_downsample: bool
) -> DownBlock:
    """Build a down block from its Diffusers type string."""
    return _build("down", _DOWN, down_block_type, in_channels, out_channels, num_layers, temb_channels, add_downsample)


def get_up_block(
    up_block_type: str, num_layers: int, in_channels: int, out_channels: int, temb_channels: int, add_upsample: bool
) -> UpBlock:
    """Build an up block from its Diffusers type string."""
    return _build("up", _UP, up_block_type, in_channels, out_channels, num_layers, temb_channels, add_upsample)


_DOWN: dict[str, _Builder[DownBlock]] = {
    "DownResnetBlock1D": _temporal(DownResnetBlock1D, "add_downsample"),
    **{block.__name__: _dance(block) for block in (DownBlock1D, AttnDownBlock1D, DownBlock1DNoSkip)},
}
_UP: dict[str, _Builder[UpBlock]] = {
    "UpResnetBlock1D": _temporal(UpResnetBlock1D, "add_upsample"),
    **{block.__name__: _dance(block) for block in (UpBlock1D, AttnUpBlock1D, UpBlock1DNoSkip)},
}


def get_mid_block(
    mid_block_type: str,
    num_layers: int,
    in_channels: int,
    mid_channels: int,
    out_channels: int,
    embed_dim: int,
    add_downsample: bool,
) -> MidBlock:
    """Build a mid block from its Diffusers type string."""
    if mid_block_type == "MidResTemporalBlock1D":
        return MidResTemporalBlock1D(
            num_layers=num_layers,
            in_channels=in_channels,
            out_channels=out_channels,
            embed_dim=embed_dim,
            add_downsample=add_downsample,
        )
    if mid_block_type == "ValueFunctionMidBlock1D":
        return ValueFunctionMidBlock1D(in_channels=in_channels, out_channels=out_channels, embed_dim=embed_dim)
    if mid_block_type == "UNetMidBlock1D":
        return UNetMidBlock1D(in_channels=in_channels, mid_channels=mid_channels, out_channels=out_channels)
    raise _unknown("mid", mid_block_type, ["MidResTemporalBlock1D", "ValueFunctionMidBlock1D", "UNetMidBlock1D"])


def get_out_block(
    *,
    out_block_type: str | None,
    num_groups_out: int,
    embed_dim: int,
    out_channels: int,
    act_fn: str | None,
    fc_dim: int,
) -> OutBlock | None:
    """Build the optional output block (``None`` when ``out_block_type`` names none)."""
    if out_block_type == "OutConv1DBlock":
        return OutConv1DBlock(num_groups_out, out_channels, embed_dim, _required_act(act_fn, out_block_type))
    if out_block_type == "ValueFunction":
        return OutValueFunctionBlock(fc_dim, embed_dim, _required_act(act_fn, out_block_type))
    return None


def _required_act(act_fn: str | None, block: str) -> str:
    if act_fn is None:
        raise ValueError(f"out_block_type {block!r} needs an activation: set act_fn (e.g. 'mish') in the config")
    return act_fn
