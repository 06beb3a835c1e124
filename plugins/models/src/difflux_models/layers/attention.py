"""Attention, feed-forward and the basic transformer block.

Every attention computation goes through :func:`difflux.attention.attention`, with the backend
chosen per module by ``Attention.attention_backend`` (set by ``ModelMixin.set_attention_backend``).
The projection arithmetic lives on :class:`Attention`; a *processor* is a small callable that
strings those steps together, so it can be swapped per module (``set_attn_processor``).

Observing and editing attention (docs/attention.md, "Reading and editing attention"): a processor
that subclasses :class:`AttentionEditProcessor` overrides ``edit_qkv`` (add to / replace the
projected queries, keys and values) and ``edit_probs`` (store or replace the softmax weights);
only the modules given such a processor (:func:`edit_attention`) compute the weights explicitly,
every other module keeps the fused kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from difflux.attention import attention
from torch import nn

from .normalization import AdaLayerNorm, AdaLayerNormZero, RMSNorm

__all__ = [
    "Attention",
    "AttentionEditProcessor",
    "AttentionProcessor",
    "AttentionProcessorMixin",
    "AttentionStoreProcessor",
    "AttnAddedKVProcessor",
    "AttnProcessor",
    "BasicTransformerBlock",
    "FeedForward",
    "GatedSelfAttentionDense",
    "edit_attention",
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
        out = self.attend(attn, q, k, v, mask, encoder_hidden_states is not None)
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

    def attend(
        self,
        attn: Attention,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        cross: bool,
    ) -> torch.Tensor:
        """``softmax(q kᵀ · scale + mask) v`` through the module's backend (the fused kernel).

        ``q``: ``(batch, heads, seq_q, head_dim)``; ``k``, ``v``: ``(batch, heads, seq_k, head_dim)``;
        ``mask``: as :meth:`Attention.prepare_attention_mask` shapes it; ``cross``: the keys come
        from encoder states (cross-attention). Returns ``(batch, heads, seq_q, head_dim)``.
        """
        return attention(q, k, v, attn_mask=mask, scale=attn.scale, backend=attn.attention_backend)


_DEFAULT_PROCESSOR = AttnProcessor()


class AttentionEditProcessor(AttnProcessor):
    """A processor that observes or edits one attention module (prompt-to-prompt style control).

    Subclass it and override any of:

    - :meth:`edit_qkv` ``(attn, q, k, v, cross) -> (q, k, v)``: change the projected queries,
      keys and values (``(batch, heads, seq, head_dim)``, the module's dtype) before attention,
      e.g. add an offset or swap in another sample's keys (cross-frame attention);
    - :meth:`edit_probs` ``(attn, probs, cross) -> probs``: read (store) or replace the attention
      weights ``probs = softmax(q kᵀ · scale + mask)``, shape ``(batch, heads, seq_q, seq_k)``,
      rows summing to one, the dtype of ``q``; the module then returns ``probs @ v`` projected out.
    - :meth:`wants_probs` ``(attn, cross) -> bool``: whether this call needs the weights. By
      default: whenever the subclass overrides :meth:`edit_probs`. Only then does the module
      compute the weights explicitly (a ``seq_q x seq_k`` matrix per head); otherwise it keeps
      the fused kernel of its attention backend, with the edited q/k/v.

    The norms, reshapes, residual and output projection are :class:`AttnProcessor`'s, so an
    edit processor gives exactly the default result when its hooks return their inputs.
    Install one per module with :func:`edit_attention` or ``model.set_attn_processor(mapping)``;
    the name a processor was installed under is in :attr:`name` (``"mid_block.attentions.0.
    transformer_blocks.0.attn1"``) when :func:`edit_attention` installed it.
    """

    name: str = ""

    def edit_qkv(
        self, attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cross: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queries, keys and values attention uses (default: unchanged)."""
        return q, k, v

    def edit_probs(self, attn: Attention, probs: torch.Tensor, cross: bool) -> torch.Tensor:
        """The attention weights ``(batch, heads, seq_q, seq_k)`` the values are averaged with (default: unchanged)."""
        return probs

    def wants_probs(self, attn: Attention, cross: bool) -> bool:
        """Whether this call computes the weights explicitly (default: the subclass overrides :meth:`edit_probs`)."""
        return type(self).edit_probs is not AttentionEditProcessor.edit_probs

    def attend(
        self,
        attn: Attention,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        cross: bool,
    ) -> torch.Tensor:
        q, k, v = self.edit_qkv(attn, q, k, v, cross)
        if not self.wants_probs(attn, cross):
            return super().attend(attn, q, k, v, mask, cross)
        probs = self.edit_probs(attn, attn.attention_probs(q, k, mask), cross)
        return torch.matmul(probs.to(v.dtype), v)


class AttentionStoreProcessor(AttentionEditProcessor):
    """Keeps the attention weights of the last call in :attr:`probs` (``(batch, heads, seq_q, seq_k)``).

    ``only_cross``: store cross-attention calls only (self-attention calls keep the fused kernel).
    Self-Attention Guidance reads the mid-block self-attention map this way (Hong et al., 2023,
    "Improving Sample Quality of Diffusion Models Using Self-Attention Guidance").
    """

    def __init__(self, only_cross: bool = False) -> None:
        self.only_cross = only_cross
        self.probs: torch.Tensor | None = None

    def wants_probs(self, attn: Attention, cross: bool) -> bool:
        return cross or not self.only_cross

    def edit_probs(self, attn: Attention, probs: torch.Tensor, cross: bool) -> torch.Tensor:
        self.probs = probs
        return probs


#: ``choose(name, module) -> processor | None``: the processor for the attention module at ``name``
#: (its path in the model, e.g. ``"up_blocks.1.attentions.0.transformer_blocks.0.attn2"``), or ``None`` to keep its own
ChooseProcessor = Callable[[str, "Attention"], "AttentionProcessor | None"]


@contextmanager
def edit_attention(model: nn.Module, choose: ChooseProcessor) -> Iterator[dict[str, AttentionProcessor]]:
    """Give some attention modules of ``model`` another processor for the ``with`` block; restore them after.

    ``choose(name, module)`` returns the processor for that module, or ``None`` to leave it alone
    (it keeps its processor and its fused kernel). An :class:`AttentionEditProcessor` gets its
    :attr:`~AttentionEditProcessor.name` set. Yields the installed processors by module name.
    The previous processors come back even when the block raises.

    :raises TypeError: when ``choose`` returns something that is not callable.
    """
    installed: dict[str, AttentionProcessor] = {}
    previous: dict[str, tuple[Attention, AttentionProcessor]] = {}
    try:
        for name, module in model.named_modules():
            if not isinstance(module, Attention):
                continue
            processor = choose(name, module)
            if processor is None:
                continue
            if not callable(processor):
                raise TypeError(
                    f"edit_attention: the chooser returned {type(processor).__name__} for {name!r}; "
                    "return an attention processor (callable) or None"
                )
            if isinstance(processor, AttentionEditProcessor) and not processor.name:
                processor.name = name
            previous[name] = (module, module.processor)
            module.set_processor(processor)
            installed[name] = processor
        yield installed
    finally:
        for module, processor in previous.values():
            module.set_processor(processor)


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

    def attention_probs(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The attention weights ``softmax(q kᵀ · scale + mask)``, ``(batch, heads, seq_q, seq_k)``, in ``q``'s dtype.

        ``q``, ``k``: ``(batch, heads, seq, head_dim)``; ``mask`` as :meth:`prepare_attention_mask`
        gives it (bool keeps ``True`` positions, float is added). Computed in float32 when the
        module upcasts attention or softmax. Differentiable (Attend-and-Excite takes its gradient).
        """
        dtype = q.dtype
        if self.upcast_attention:
            q, k = q.float(), k.float()
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        if mask is not None:
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, float("-inf"))
            else:
                scores = scores + mask.to(scores.dtype)
        if self.upcast_softmax:
            scores = scores.float()
        return scores.softmax(dim=-1).to(dtype)

    def head_to_batch_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(batch, seq, heads * head_dim)`` to ``(batch * heads, seq, head_dim)`` (Diffusers' processor layout)."""
        b, n, _ = tensor.shape
        return self._heads(tensor).reshape(b * self.heads, n, -1)

    def batch_to_head_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(batch * heads, seq, head_dim)`` back to ``(batch, seq, heads * head_dim)``."""
        bh, n, d = tensor.shape
        return tensor.view(bh // self.heads, self.heads, n, d).transpose(1, 2).reshape(bh // self.heads, n, -1)

    def get_attention_scores(
        self, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention weights of ``(batch * heads, seq, head_dim)`` queries and keys (Diffusers' layout):
        ``(batch * heads, seq_q, seq_k)``; ``attention_mask`` additive, broadcastable to that shape."""
        mask = None if attention_mask is None else attention_mask[:, None]
        return self.attention_probs(query[:, None], key[:, None], mask)[:, 0]

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


class GatedSelfAttentionDense(nn.Module):
    """GLIGEN's gated self-attention (Li et al., 2023, "GLIGEN: Open-Set Grounded Text-to-Image
    Generation", eq. 8): the visual tokens attend over themselves and the grounding tokens, and
    the result is added through ``tanh`` gates that start closed.

    Keys (Diffusers' ``fuser``): ``linear`` (grounding tokens to ``query_dim``), ``attn``, ``ff``,
    ``norm1``, ``norm2``, scalars ``alpha_attn`` and ``alpha_dense``. ``enabled = False`` makes it the
    identity (the GLIGEN pipelines switch it off after ``gligen_scheduled_sampling_beta``).
    """

    def __init__(self, query_dim: int, context_dim: int, n_heads: int, d_head: int) -> None:
        super().__init__()
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = Attention(query_dim=query_dim, heads=n_heads, dim_head=d_head)
        self.ff = FeedForward(query_dim, activation_fn="geglu")
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))
        self.enabled = True

    def forward(self, x: torch.Tensor, objs: torch.Tensor) -> torch.Tensor:
        """``x``: visual tokens ``(batch, n_visual, query_dim)``; ``objs``: grounding tokens
        ``(batch, n_objs, context_dim)``. Returns ``(batch, n_visual, query_dim)``."""
        if not self.enabled:
            return x
        n_visual = x.shape[1]
        tokens = torch.cat([x, self.linear(objs)], dim=1)
        x = x + self.alpha_attn.tanh() * self.attn(self.norm1(tokens))[:, :n_visual]
        out: torch.Tensor = x + self.alpha_dense.tanh() * self.ff(self.norm2(x))
        return out


# -- the transformer block ----------------------------------------------------------------------


class BasicTransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, feed-forward; each pre-normed and residual.

    ``norm_type``: ``"layer_norm"`` (UNets), ``"ada_norm"`` (timestep-embedding norm),
    ``"ada_norm_zero"`` (DiT: class- and timestep-conditioned adaLN-zero) or
    ``"ada_norm_single"`` (PixArt: the modulation comes in as ``timestep``, shape ``(batch, 6 * dim)``).
    ``attention_type``: ``"default"``, or ``"gated"`` / ``"gated-text-image"`` (GLIGEN: a
    :class:`GatedSelfAttentionDense` ``fuser`` after self-attention, fed by
    ``cross_attention_kwargs["gligen"]["objs"]``, the grounding tokens ``(batch, n_objs, cross_attention_dim)``).
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
        attention_type: str = "default",
    ) -> None:
        super().__init__()
        if attention_type not in ("default", "gated", "gated-text-image"):
            raise ValueError(
                f"unknown attention_type {attention_type!r}; expected 'default', 'gated' or 'gated-text-image'"
            )
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

        if attention_type != "default":
            if cross_attention_dim is None:
                raise ValueError(f"attention_type={attention_type!r} (GLIGEN) needs cross_attention_dim")
            self.fuser = GatedSelfAttentionDense(dim, cross_attention_dim, num_attention_heads, attention_head_dim)

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
        gligen = None
        if "gligen" in kwargs:
            kwargs = dict(kwargs)
            gligen = kwargs.pop("gligen")
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
        if gligen is not None:
            fuser = getattr(self, "fuser", None)
            if fuser is None:
                raise ValueError(
                    "cross_attention_kwargs['gligen'] reached a transformer block without GLIGEN layers; "
                    "build the UNet with attention_type='gated' or 'gated-text-image'"
                )
            hidden_states = fuser(hidden_states, gligen["objs"])

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
