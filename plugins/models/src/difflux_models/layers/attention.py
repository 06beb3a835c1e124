"""Attention, feed-forward and the basic transformer block.

Every attention computation goes through :func:`difflux.attention.attention`, with the backend
chosen per module by ``Attention.attention_backend`` (set by ``ModelMixin.set_attention_backend``).
The projection arithmetic lives on :class:`Attention`; a *processor* is a small callable that
strings those steps together, so it can be swapped per module (``set_attn_processor``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from difflux.attention import attention
from torch import nn

from .normalization import AdaLayerNorm, AdaLayerNormZero, RMSNorm

__all__ = [
    "Attention",
    "AttentionProcessor",
    "AttentionProcessorMixin",
    "AttnAddedKVProcessor",
    "AttnProcessor",
    "BasicTransformerBlock",
    "FeedForward",
]


class AttentionProcessor(Protocol):
    """What an attention processor is: called with the module and the forward inputs."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


class AttnProcessor:
    """The default processor: project, attend through :func:`difflux.attention.attention`, project out."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        q, k, v = attn.project_qkv(hidden_states, encoder_hidden_states)
        mask = attn.prepare_attention_mask(attention_mask, q)
        out = attention(q, k, v, attn_mask=mask, scale=attn.scale, backend=attn.attention_backend)
        out = attn.project_out(out)
        if spatial:
            out = out.transpose(1, 2).reshape(b, c, h, w)
        if attn.residual_connection:
            # residual first: the sum takes its (contiguous) layout rather than the transposed one
            # of a spatial ``out``, so later norms and convolutions need no copy; same values
            out = residual + out
        if attn.rescale_output_factor != 1.0:
            out = out / attn.rescale_output_factor
        return out


_DEFAULT_PROCESSOR = AttnProcessor()


class AttnAddedKVProcessor:
    """Attention with added key/value projections (unCLIP, DeepFloyd IF and Kandinsky UNets): the
    queries come from the group-normed feature map, the keys and values are the encoder states
    through ``add_k_proj`` / ``add_v_proj`` followed (unless ``only_cross_attention``) by the
    feature map's own ``to_k`` / ``to_v``; the result is added to the input.

    ``hidden_states``: ``(batch, channels, height, width)``; ``encoder_hidden_states``:
    ``(batch, seq, added_kv_proj_dim)``; ``attention_mask``: additive, over the encoder positions
    (the feature-map positions are never masked).
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attn.add_k_proj is None or attn.add_v_proj is None:
            raise ValueError("AttnAddedKVProcessor needs an Attention built with added_kv_proj_dim")
        residual = hidden_states
        b, c = hidden_states.shape[:2]
        tokens = hidden_states.reshape(b, c, -1).transpose(1, 2)
        if encoder_hidden_states is None:
            encoder_hidden_states = tokens
        elif attn.norm_cross is not None:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        if attn.group_norm is not None:
            tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
        q = attn._heads(attn.to_q(tokens))
        k = attn._heads(attn.add_k_proj(encoder_hidden_states))
        v = attn._heads(attn.add_v_proj(encoder_hidden_states))
        if not attn.only_cross_attention:
            k = torch.cat([k, attn._heads(attn.to_k(tokens))], dim=2)
            v = torch.cat([v, attn._heads(attn.to_v(tokens))], dim=2)
        mask = attn.prepare_attention_mask(attention_mask, q)
        if mask is not None and mask.shape[-1] < k.shape[2]:  # the feature-map keys stay visible
            mask = F.pad(mask, (0, k.shape[2] - mask.shape[-1]), value=0.0)
        out = attention(q, k, v, attn_mask=mask, scale=attn.scale, backend=attn.attention_backend)
        out = attn.project_out(out)
        return out.transpose(1, 2).reshape(residual.shape) + residual


_ADDED_KV_PROCESSOR = AttnAddedKVProcessor()


class Attention(nn.Module):
    """Multi-head (self or cross) attention with Diffusers' parameter names.

    Keys: ``to_q``, ``to_k``, ``to_v``, ``to_out.0``; optional ``group_norm``, ``spatial_norm``,
    ``norm_cross``, ``norm_q`` / ``norm_k``; after :meth:`fuse_projections`, ``to_qkv`` (self
    attention) or ``to_kv`` (cross attention).
    """

    attention_backend: str | None = None
    to_qkv: nn.Linear  # present after fuse_projections() on self attention
    to_kv: nn.Linear  # present after fuse_projections() on cross attention

    def __init__(
        self,
        query_dim: int,
        cross_attention_dim: int | None = None,
        heads: int = 8,
        dim_head: int = 64,
        dropout: float = 0.0,
        bias: bool = False,
        upcast_attention: bool = False,
        upcast_softmax: bool = False,
        cross_attention_norm: str | None = None,
        cross_attention_norm_num_groups: int = 32,
        qk_norm: str | None = None,
        norm_num_groups: int | None = None,
        spatial_norm_dim: int | None = None,
        out_bias: bool = True,
        scale_qk: bool = True,
        eps: float = 1e-5,
        rescale_output_factor: float = 1.0,
        residual_connection: bool = False,
        out_dim: int | None = None,
        elementwise_affine: bool = True,
        processor: AttentionProcessor | None = None,
        added_kv_proj_dim: int | None = None,
        added_proj_bias: bool = True,
        only_cross_attention: bool = False,
    ) -> None:
        super().__init__()
        from .normalization import SpatialNorm

        self.inner_dim = out_dim if out_dim is not None else dim_head * heads
        self.query_dim = query_dim
        self.is_cross_attention = cross_attention_dim is not None
        self.cross_attention_dim = cross_attention_dim if cross_attention_dim is not None else query_dim
        self.upcast_attention = upcast_attention
        self.upcast_softmax = upcast_softmax
        self.rescale_output_factor = rescale_output_factor
        self.residual_connection = residual_connection
        self.out_dim = out_dim if out_dim is not None else query_dim
        self.heads = out_dim // dim_head if out_dim is not None else heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5 if scale_qk else 1.0
        self.fused_projections = False

        self.group_norm = (
            nn.GroupNorm(num_groups=norm_num_groups, num_channels=query_dim, eps=eps, affine=True)
            if norm_num_groups is not None
            else None
        )
        self.spatial_norm = SpatialNorm(query_dim, spatial_norm_dim) if spatial_norm_dim is not None else None
        self.norm_q: nn.Module | None
        self.norm_k: nn.Module | None
        if qk_norm is None:
            self.norm_q = self.norm_k = None
        elif qk_norm == "layer_norm":
            self.norm_q = nn.LayerNorm(dim_head, eps=eps, elementwise_affine=elementwise_affine)
            self.norm_k = nn.LayerNorm(dim_head, eps=eps, elementwise_affine=elementwise_affine)
        elif qk_norm == "rms_norm":
            self.norm_q = RMSNorm(dim_head, eps=eps, elementwise_affine=elementwise_affine)
            self.norm_k = RMSNorm(dim_head, eps=eps, elementwise_affine=elementwise_affine)
        else:
            raise ValueError(f"unknown qk_norm {qk_norm!r}; expected None, 'layer_norm' or 'rms_norm'")
        self.norm_cross: nn.Module | None
        if cross_attention_norm is None:
            self.norm_cross = None
        elif cross_attention_norm == "layer_norm":
            self.norm_cross = nn.LayerNorm(self.cross_attention_dim)
        elif cross_attention_norm == "group_norm":
            # with added key/value projections the norm sees the unprojected encoder states
            norm_channels = added_kv_proj_dim if added_kv_proj_dim is not None else self.cross_attention_dim
            self.norm_cross = nn.GroupNorm(cross_attention_norm_num_groups, norm_channels, eps=1e-5)
        else:
            raise ValueError(f"unknown cross_attention_norm {cross_attention_norm!r}")

        if only_cross_attention and added_kv_proj_dim is None:
            raise ValueError("Attention: only_cross_attention=True needs added_kv_proj_dim")
        self.only_cross_attention = only_cross_attention
        self.added_kv_proj_dim = added_kv_proj_dim
        self.to_q = nn.Linear(query_dim, self.inner_dim, bias=bias)
        if only_cross_attention:  # the added projections are the only keys and values
            self.register_module("to_k", None)
            self.register_module("to_v", None)
        else:
            self.to_k = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
            self.to_v = nn.Linear(self.cross_attention_dim, self.inner_dim, bias=bias)
        # added key/value projections of the encoder states (unCLIP / IF / Kandinsky simple cross-attention)
        self.add_k_proj: nn.Linear | None = None
        self.add_v_proj: nn.Linear | None = None
        if added_kv_proj_dim is not None:
            self.add_k_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=added_proj_bias)
            self.add_v_proj = nn.Linear(added_kv_proj_dim, self.inner_dim, bias=added_proj_bias)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, self.out_dim, bias=out_bias), nn.Dropout(dropout)])
        default = _ADDED_KV_PROCESSOR if added_kv_proj_dim is not None else _DEFAULT_PROCESSOR
        self.processor: AttentionProcessor = processor if processor is not None else default

    # -- steps a processor strings together ------------------------------------------------

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def project_qkv(
        self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values shaped ``(batch, heads, seq, head_dim)``."""
        if encoder_hidden_states is None:
            if self.fused_projections and not self.is_cross_attention:
                q, k, v = self.to_qkv(hidden_states).chunk(3, dim=-1)
            else:
                q, k, v = self.to_q(hidden_states), self.to_k(hidden_states), self.to_v(hidden_states)
        else:
            if self.norm_cross is not None:
                encoder_hidden_states = self.norm_encoder_hidden_states(encoder_hidden_states)
            q = self.to_q(hidden_states)
            if self.fused_projections and self.is_cross_attention:
                k, v = self.to_kv(encoder_hidden_states).chunk(2, dim=-1)
            else:
                k, v = self.to_k(encoder_hidden_states), self.to_v(encoder_hidden_states)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if self.norm_q is not None and self.norm_k is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        return q, k, v

    def norm_encoder_hidden_states(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        if self.norm_cross is None:
            raise RuntimeError(
                "Attention.norm_encoder_hidden_states: internal check failed: self.norm_cross is not None"
            )
        if isinstance(self.norm_cross, nn.GroupNorm):
            return self.norm_cross(encoder_hidden_states.transpose(1, 2)).transpose(1, 2)  # type: ignore[no-any-return]
        return self.norm_cross(encoder_hidden_states)  # type: ignore[no-any-return]

    def prepare_attention_mask(self, attention_mask: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
        """Shape a mask as ``(batch, heads | 1, seq_q | 1, seq_k)`` in the query dtype (bool kept).

        Accepts ``(batch, seq_k)``, ``(batch, seq_q | 1, seq_k)``, ``(batch * heads, seq_q | 1, seq_k)``
        and 4-d masks; float masks are added to the scores.
        """
        if attention_mask is None:
            return None
        mask = attention_mask
        batch = q.shape[0]
        if mask.ndim == 2:
            mask = mask[:, None, None, :]
        elif mask.ndim == 3:
            if mask.shape[0] == batch * self.heads and self.heads > 1:
                mask = mask.view(batch, self.heads, mask.shape[1], mask.shape[2])
            else:
                mask = mask[:, None]
        if mask.dtype != torch.bool and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)
        return mask

    def project_out(self, out: torch.Tensor) -> torch.Tensor:
        """``(batch, heads, seq, head_dim)`` to ``(batch, seq, out_dim)`` through ``to_out``."""
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, -1).to(out.dtype)
        out = self.to_out[0](out)
        return self.to_out[1](out)  # type: ignore[no-any-return]

    # -- processors and fusion ---------------------------------------------------------------

    def set_processor(self, processor: AttentionProcessor) -> None:
        self.processor = processor

    def get_processor(self) -> AttentionProcessor:
        return self.processor

    @torch.no_grad()
    def fuse_projections(self) -> None:
        """Concatenate the q/k/v (self attention) or k/v (cross attention) projections into one matmul."""
        if self.fused_projections or self.added_kv_proj_dim is not None:  # added-KV attention: nothing to fuse
            return
        dev, dtype = self.to_q.weight.device, self.to_q.weight.dtype
        has_bias = self.to_q.bias is not None
        if not self.is_cross_attention:
            parts = [self.to_q, self.to_k, self.to_v]
            name = "to_qkv"
        else:
            parts = [self.to_k, self.to_v]
            name = "to_kv"
        weight = torch.cat([p.weight for p in parts])
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device=dev, dtype=dtype)
        fused.weight.copy_(weight)
        if has_bias:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
        setattr(self, name, fused)
        self.fused_projections = True

    def unfuse_projections(self) -> None:
        """Drop the fused projection made by :meth:`fuse_projections`."""
        for name in ("to_qkv", "to_kv"):
            if name in self._modules:
                delattr(self, name)
        self.fused_projections = False

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **cross_attention_kwargs: Any,
    ) -> torch.Tensor:
        """``cross_attention_kwargs`` such as ``scale`` (a LoRA weight, no effect without LoRA) are
        passed to a custom processor only when it asks for them by name."""
        extra = {k: v for k, v in cross_attention_kwargs.items() if k != "scale"}
        if extra:
            return self.processor(self, hidden_states, encoder_hidden_states, attention_mask, temb, **extra)  # type: ignore[call-arg]
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask, temb)


class AttentionProcessorMixin:
    """``attn_processors``, ``set_attn_processor`` and q/k/v fusion for a model holding :class:`Attention` modules."""

    def _named_attention_modules(self) -> Iterator[tuple[str, Attention]]:
        if not isinstance(self, nn.Module):
            raise RuntimeError(
                "AttentionProcessorMixin._named_attention_modules: internal check failed: isinstance(self, nn.Module)"
            )
        for name, module in self.named_modules():
            if isinstance(module, Attention):
                yield name, module

    @property
    def attn_processors(self) -> dict[str, AttentionProcessor]:
        """Every attention processor, keyed ``"<module path>.processor"``."""
        return {f"{name}.processor": m.processor for name, m in self._named_attention_modules()}

    def set_attn_processor(self, processor: AttentionProcessor | Mapping[str, AttentionProcessor]) -> None:
        """Use ``processor`` for every attention module, or a mapping keyed like :attr:`attn_processors`."""
        modules = dict(self._named_attention_modules())
        if isinstance(processor, Mapping):
            keys = {f"{n}.processor" for n in modules}
            missing = sorted(keys - set(processor))
            unknown = sorted(set(processor) - keys)
            if missing or unknown:
                raise ValueError(
                    f"set_attn_processor got a mapping that does not match the attention layers: "
                    f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unknown {unknown[:5]}; "
                    f"pass one processor for all layers or a mapping with the keys of .attn_processors"
                )
            for name, m in modules.items():
                m.set_processor(processor[f"{name}.processor"])
        else:
            for m in modules.values():
                m.set_processor(processor)

    def set_default_attn_processor(self) -> None:
        """Go back to :class:`AttnProcessor` everywhere."""
        self.set_attn_processor(AttnProcessor())

    def fuse_qkv_projections(self) -> None:
        """Fuse q/k/v (self attention) and k/v (cross attention) projections of every attention module."""
        for _, m in self._named_attention_modules():
            m.fuse_projections()

    def unfuse_qkv_projections(self) -> None:
        """Undo :meth:`fuse_qkv_projections`."""
        for _, m in self._named_attention_modules():
            m.unfuse_projections()


# -- feed-forward ------------------------------------------------------------------------------


class GELU(nn.Module):
    """Linear projection then GELU (``approximate="tanh"`` for the tanh form)."""

    def __init__(self, dim_in: int, dim_out: int, approximate: str = "none", bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


class GEGLU(nn.Module):
    """Gated GELU: one projection to twice the width, ``value * gelu(gate)``."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        out: torch.Tensor = value * F.gelu(gate)
        return out


class ApproximateGELU(nn.Module):
    """Linear projection then the sigmoid approximation ``x * sigmoid(1.702 x)``."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return x * torch.sigmoid(1.702 * x)


class FeedForward(nn.Module):
    """``net.0`` (activation with its input projection), ``net.1`` dropout, ``net.2`` output projection."""

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        mult: int = 4,
        dropout: float = 0.0,
        activation_fn: str = "geglu",
        final_dropout: bool = False,
        inner_dim: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        inner = inner_dim if inner_dim is not None else int(dim * mult)
        out = dim_out if dim_out is not None else dim
        act: nn.Module
        if activation_fn == "gelu":
            act = GELU(dim, inner, bias=bias)
        elif activation_fn == "gelu-approximate":
            act = GELU(dim, inner, approximate="tanh", bias=bias)
        elif activation_fn == "geglu":
            act = GEGLU(dim, inner, bias=bias)
        elif activation_fn == "geglu-approximate":
            act = ApproximateGELU(dim, inner, bias=bias)
        else:
            raise ValueError(
                f"unknown activation_fn {activation_fn!r}; expected 'gelu', 'gelu-approximate', 'geglu' "
                "or 'geglu-approximate'"
            )
        layers: list[nn.Module] = [act, nn.Dropout(dropout), nn.Linear(inner, out, bias=bias)]
        if final_dropout:
            layers.append(nn.Dropout(dropout))
        self.net = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            hidden_states = layer(hidden_states)
        return hidden_states


# -- the transformer block ----------------------------------------------------------------------


class BasicTransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, feed-forward; each pre-normed and residual.

    ``norm_type``: ``"layer_norm"`` (UNets), ``"ada_norm"`` (timestep-embedding norm),
    ``"ada_norm_zero"`` (DiT: class- and timestep-conditioned adaLN-zero) or
    ``"ada_norm_single"`` (PixArt: the modulation comes in as ``timestep``, shape ``(batch, 6 * dim)``).
    """

    def __init__(
        self,
        dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        dropout: float = 0.0,
        cross_attention_dim: int | None = None,
        activation_fn: str = "geglu",
        num_embeds_ada_norm: int | None = None,
        attention_bias: bool = False,
        only_cross_attention: bool = False,
        double_self_attention: bool = False,
        upcast_attention: bool = False,
        norm_elementwise_affine: bool = True,
        norm_type: str = "layer_norm",
        norm_eps: float = 1e-5,
        final_dropout: bool = False,
        ff_inner_dim: int | None = None,
        ff_bias: bool = True,
        attention_out_bias: bool = True,
    ) -> None:
        super().__init__()
        if norm_type in ("ada_norm", "ada_norm_zero") and num_embeds_ada_norm is None:
            raise ValueError(f"norm_type={norm_type!r} needs num_embeds_ada_norm")
        if norm_type not in ("layer_norm", "ada_norm", "ada_norm_zero", "ada_norm_single"):
            raise ValueError(f"unknown norm_type {norm_type!r}")
        self.norm_type = norm_type
        self.only_cross_attention = only_cross_attention

        self.norm1: nn.Module
        if norm_type == "ada_norm":
            if num_embeds_ada_norm is None:
                raise ValueError("BasicTransformerBlock: norm_type='ada_norm' needs num_embeds_ada_norm (an int)")
            self.norm1 = AdaLayerNorm(dim, num_embeds_ada_norm)
        elif norm_type == "ada_norm_zero":
            self.norm1 = AdaLayerNormZero(dim, num_embeds_ada_norm)
        else:
            self.norm1 = nn.LayerNorm(dim, elementwise_affine=norm_elementwise_affine, eps=norm_eps)
        self.attn1 = Attention(
            query_dim=dim,
            heads=num_attention_heads,
            dim_head=attention_head_dim,
            dropout=dropout,
            bias=attention_bias,
            cross_attention_dim=cross_attention_dim if only_cross_attention else None,
            upcast_attention=upcast_attention,
            out_bias=attention_out_bias,
        )

        self.norm2: nn.Module | None
        self.attn2: Attention | None
        if cross_attention_dim is not None or double_self_attention:
            if norm_type == "ada_norm":
                if num_embeds_ada_norm is None:
                    raise ValueError("BasicTransformerBlock: norm_type='ada_norm' needs num_embeds_ada_norm (an int)")
                self.norm2 = AdaLayerNorm(dim, num_embeds_ada_norm)
            else:
                self.norm2 = nn.LayerNorm(dim, norm_eps, norm_elementwise_affine)
            self.attn2 = Attention(
                query_dim=dim,
                cross_attention_dim=cross_attention_dim if not double_self_attention else None,
                heads=num_attention_heads,
                dim_head=attention_head_dim,
                dropout=dropout,
                bias=attention_bias,
                upcast_attention=upcast_attention,
                out_bias=attention_out_bias,
            )
        else:
            self.norm2 = (
                nn.LayerNorm(dim, norm_eps, norm_elementwise_affine) if norm_type == "ada_norm_single" else None
            )
            self.attn2 = None

        self.norm3: nn.Module | None = (
            nn.LayerNorm(dim, norm_eps, norm_elementwise_affine) if norm_type != "ada_norm_single" else None
        )
        self.ff = FeedForward(
            dim,
            dropout=dropout,
            activation_fn=activation_fn,
            final_dropout=final_dropout,
            inner_dim=ff_inner_dim,
            bias=ff_bias,
        )
        if norm_type == "ada_norm_single":
            self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        class_labels: torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        kwargs = cross_attention_kwargs or {}
        norm_type = self.norm_type
        if norm_type == "ada_norm":
            normed = self.norm1(hidden_states, timestep)
        elif norm_type == "ada_norm_zero":
            normed, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(
                hidden_states, timestep, class_labels, hidden_dtype=hidden_states.dtype
            )
        elif norm_type == "ada_norm_single":
            if timestep is None:
                raise ValueError("BasicTransformerBlock: norm_type='ada_norm_single' needs the `timestep` embedding")
            mods = self.scale_shift_table[None] + timestep.reshape(hidden_states.shape[0], 6, -1)
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=1)
            normed = self.norm1(hidden_states) * (1 + scale_msa) + shift_msa
        else:
            normed = self.norm1(hidden_states)

        attn_out = self.attn1(
            normed,
            encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
            attention_mask=attention_mask,
            **kwargs,
        )
        if norm_type == "ada_norm_zero":
            attn_out = gate_msa.unsqueeze(1) * attn_out
        elif norm_type == "ada_norm_single":
            attn_out = gate_msa * attn_out
        hidden_states = attn_out + hidden_states
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.squeeze(1)

        if self.attn2 is not None:
            if self.norm2 is None:
                raise RuntimeError("BasicTransformerBlock.forward: internal check failed: self.norm2 is not None")
            if norm_type == "ada_norm":
                normed = self.norm2(hidden_states, timestep)
            elif norm_type == "ada_norm_single":
                normed = hidden_states  # PixArt applies no norm before cross-attention
            else:
                normed = self.norm2(hidden_states)
            attn_out = self.attn2(
                normed,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                **kwargs,
            )
            hidden_states = attn_out + hidden_states

        if norm_type == "ada_norm_single":
            if self.norm2 is None:
                raise RuntimeError("BasicTransformerBlock.forward: internal check failed: self.norm2 is not None")
            normed = self.norm2(hidden_states) * (1 + scale_mlp) + shift_mlp
        else:
            if self.norm3 is None:
                raise RuntimeError("BasicTransformerBlock.forward: internal check failed: self.norm3 is not None")
            normed = self.norm3(hidden_states)
            if norm_type == "ada_norm_zero":
                normed = normed * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        ff_out = self.ff(normed)
        if norm_type == "ada_norm_zero":
            ff_out = gate_mlp.unsqueeze(1) * ff_out
        elif norm_type == "ada_norm_single":
            ff_out = gate_mlp * ff_out
        hidden_states = ff_out + hidden_states
        if hidden_states.ndim == 4:
            hidden_states = hidden_states.squeeze(1)
        return hidden_states
