"""Attention dispatch: models call :func:`attention`; plugins provide the kernels.

Which backend runs, most specific first:

1. the :func:`attention_backend` context manager (a context variable, so per thread / task);
2. the ``backend=`` argument of the call (models pass their per-module setting);
3. the process default, :func:`set_attention_backend`, else the ``DIFFLUX_ATTENTION_BACKEND``
   environment variable;
4. automatic: the highest-priority registered backend that is available in this process and
   whose constraints accept the inputs.

A backend chosen by name (1-3) whose constraints reject the inputs raises
:class:`AttentionBackendError` naming the backend and the constraint; it never silently falls
back.  Backend functions are resolved once per name and cached, so a call costs a few dict
look-ups on top of the kernel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from . import registry as _registry_mod
from .errors import DiffluxError
from .registry import AttentionBackendSpec, get_registry

__all__ = [
    "ENV_VAR",
    "AttentionBackendChoice",
    "AttentionBackendError",
    "AttentionFn",
    "attention",
    "attention_backend",
    "attention_backend_spec",
    "available_attention_backends",
    "get_attention_backend",
    "reference_attention",
    "resolve_attention_backend",
    "set_attention_backend",
]

#: Environment variable naming the process-default backend (read when the registry is built).
ENV_VAR = "DIFFLUX_ATTENTION_BACKEND"

#: What a backend implements: ``fn(q, k, v, attn_mask, scale, is_causal) -> Tensor``, called
#: positionally with q, k, v shaped ``(batch, heads, seq, head_dim)``.
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", "float | None", bool], Any]


class AttentionBackendError(DiffluxError, ValueError):
    """An attention backend is unknown, unusable here, or rejects the inputs it was given."""


class AttentionBackendChoice(str):
    """A backend name that carries keyword options for its kernel.

    It *is* the name (a ``str``: compares, hashes and prints as the name), so it goes wherever a
    backend name goes (a module's ``attention_backend``, ``backend=``, :func:`attention_backend`);
    :func:`attention` calls the kernel as ``fn(q, k, v, attn_mask, scale, is_causal, **options)``.
    ``AttentionBackendChoice("sliced", slice_size=1)`` is what ``enable_attention_slicing("max")``
    stores; ``AttentionBackendChoice("xformers", attention_op=op)`` what
    ``enable_xformers_memory_efficient_attention(op)`` stores.
    """

    options: dict[str, Any]

    def __new__(cls, name: str, **options: Any) -> AttentionBackendChoice:
        self = super().__new__(cls, name)
        self.options = options
        return self

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"AttentionBackendChoice({str.__repr__(self)}{opts})"

    def __reduce__(self) -> Any:
        return (_make_choice, (str(self), self.options))


def _make_choice(name: str, options: dict[str, Any]) -> AttentionBackendChoice:
    return AttentionBackendChoice(name, **options)


# -- the reference kernel --------------------------------------------------------------------


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """``softmax(q kᵀ · scale + mask) v`` in plain torch: the yardstick for every other backend.

    Half-precision inputs are computed in float32 and the result cast back.  A boolean mask keeps
    the positions where it is ``True``; a float mask is added to the scores; ``is_causal`` keeps
    key ``j`` for query ``i`` when ``j <= i`` (top-left aligned) and combines with a mask.  Query
    rows that can see no key give zeros.
    """
    out_dtype = q.dtype
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if is_causal:
        n_q, n_k = q.shape[-2], k.shape[-2]
        keep = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(compute)
    weights = torch.softmax(scores, dim=-1)
    # A row whose scores are all -inf has no key to attend to: softmax gives NaN; use zeros.
    blind = torch.isneginf(scores).all(dim=-1, keepdim=True)
    weights = weights.masked_fill(blind, 0.0)
    return torch.matmul(weights, v).to(out_dtype)


# -- selection state -------------------------------------------------------------------------

_UNSET: Any = object()
_context: ContextVar[str | None] = ContextVar("difflux_attention_backend", default=None)
# Whether attention_backend() was ever entered: until then attention() skips the context variable,
# which torch.compile cannot trace (difflux-optimize compiles regions that call attention()).
_context_used = False


class _State:
    """Cached resolution, rebuilt whenever the process registry object changes."""

    def __init__(self) -> None:
        self.registry: Any = _UNSET
        self.fns: dict[str, AttentionFn] = {}
        self.specs: dict[str, AttentionBackendSpec] = {}
        self.auto: tuple[AttentionBackendSpec, ...] = ()
        self.unconstrained: frozenset[str] = frozenset()
        self.explicit_default: str | None = None  # set_attention_backend
        self.default: str | None = None  # explicit_default, else the env var

    def sync(self) -> None:
        registry = get_registry()
        if registry is self.registry:
            return
        self.fns = {}
        self.specs = dict(registry.attention_backends)
        self.auto = tuple(
            sorted(
                (s for s in self.specs.values() if s.available() is None),
                key=lambda s: (-s.priority, s.name),
            )
        )
        self.unconstrained = frozenset(
            s.name
            for s in self.specs.values()
            if s.devices is None
            and s.dtypes is None
            and s.supports_mask
            and s.supports_causal
            and s.max_head_dim is None
            and s.accepts is None
        )
        if self.explicit_default is None:
            env = os.environ.get(ENV_VAR, "").strip() or None
            if env is not None:
                _spec(env, where=f"the environment variable {ENV_VAR}")
            self.default = env
        self.registry = registry


_state = _State()


def _spec(name: str, where: str = "") -> AttentionBackendSpec:
    spec = _state.specs.get(name)
    if spec is None:
        known = ", ".join(sorted(_state.specs)) or "none"
        place = f" (from {where})" if where else ""
        raise AttentionBackendError(
            f"unknown attention backend {name!r}{place}; registered backends: {known}. "
            "Backends come from plugins: `difflux plugins` lists what is installed"
        )
    return spec


def _load(name: str) -> AttentionFn:
    """Resolve a backend by name (checked available), cache and return its function."""
    spec = _spec(name)
    why = spec.available()
    if why is not None:
        raise AttentionBackendError(f"attention backend {name!r} (plugin {spec.plugin!r}) is not usable here: {why}")
    try:
        fn = spec.load()
    except (ImportError, AttributeError) as exc:
        raise AttentionBackendError(
            f"attention backend {name!r} (plugin {spec.plugin!r}) cannot be imported from {spec.ref!r}: {exc}"
        ) from exc
    _state.fns[name] = fn
    return fn


def _current() -> None:
    if _registry_mod._registry is not _state.registry:
        _state.sync()


# -- the public API --------------------------------------------------------------------------


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention through the selected backend.

    :param q: queries, ``(batch, heads, seq_q, head_dim)``.
    :param k: keys, ``(batch, heads, seq_k, head_dim)``.
    :param v: values, ``(batch, heads, seq_k, head_dim_v)``.
    :param attn_mask: broadcastable to ``(batch, heads, seq_q, seq_k)``; bool keeps ``True``
        positions, float is added to the scores.
    :param scale: score scale; ``1 / sqrt(head_dim)`` when ``None``.
    :param is_causal: mask out keys after the query position.
    :param backend: the caller's backend choice (a model's per-module setting); a
        :func:`attention_backend` context overrides it.
    :return: ``(batch, heads, seq_q, head_dim_v)``, in the dtype of ``q``.
    """
    if _registry_mod._registry is not _state.registry:
        _state.sync()
    name = (_context.get() if _context_used else None) or backend or _state.default
    if name is None:
        for spec in _state.auto:
            if spec.name in _state.unconstrained or spec.check(q, attn_mask, is_causal) is None:
                fn = _state.fns.get(spec.name) or _load(spec.name)
                return fn(q, k, v, attn_mask, scale, is_causal)  # type: ignore[no-any-return]
        raise AttentionBackendError(_no_backend_message(q, attn_mask, is_causal))
    fn = _state.fns.get(name) or _load(name)
    if name not in _state.unconstrained:
        spec = _state.specs[name]
        why = spec.check(q, attn_mask, is_causal)
        if why is not None:
            raise AttentionBackendError(
                f"attention backend {name!r} (plugin {spec.plugin!r}) rejects these inputs: it {why}; "
                "choose another backend or let difflux choose automatically"
            )
    if type(name) is AttentionBackendChoice:
        return fn(q, k, v, attn_mask, scale, is_causal, **name.options)  # type: ignore[no-any-return]
    return fn(q, k, v, attn_mask, scale, is_causal)  # type: ignore[no-any-return]


def _no_backend_message(q: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> str:
    reasons = []
    for spec in sorted(_state.specs.values(), key=lambda s: (-s.priority, s.name)):
        why = spec.available() or spec.check(q, attn_mask, is_causal)
        reasons.append(f"{spec.name}: {why}")
    return "no registered attention backend accepts these inputs (" + "; ".join(reasons) + ")"


def resolve_attention_backend(
    q: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    *,
    backend: str | None = None,
) -> str:
    """The name of the backend that :func:`attention` would run for these inputs (and checks)."""
    _current()
    name = _context.get() or backend or _state.default
    if name is None:
        for spec in _state.auto:
            if spec.check(q, attn_mask, is_causal) is None:
                return spec.name
        raise AttentionBackendError(_no_backend_message(q, attn_mask, is_causal))
    spec = _spec(name)
    why = spec.available() or spec.check(q, attn_mask, is_causal)
    if why is not None:
        raise AttentionBackendError(f"attention backend {name!r} (plugin {spec.plugin!r}) rejects these inputs: {why}")
    return name


def attention_backend_spec(name: str) -> AttentionBackendSpec:
    """The registered spec of backend ``name``; raises listing the registered names if unknown.

    ``ModelMixin.set_attention_backend`` uses this to validate a name before storing it.
    """
    _current()
    return _spec(name)


@contextmanager
def attention_backend(name: str | None) -> Iterator[None]:
    """Run every :func:`attention` call inside the block with backend ``name``.

    Overrides per-module and process settings. ``None`` lifts an outer override.
    """
    if name is not None:
        attention_backend_spec(name)
    global _context_used
    _context_used = True
    token = _context.set(name)
    try:
        yield
    finally:
        _context.reset(token)


def set_attention_backend(name: str | None) -> None:
    """Set the process-default backend; ``None`` goes back to ``DIFFLUX_ATTENTION_BACKEND``
    or, when that is unset, automatic selection."""
    _current()
    if name is not None:
        _spec(name)
        _state.explicit_default = name
        _state.default = name
    else:
        _state.explicit_default = None
        _state.registry = _UNSET  # re-read the environment variable
        _state.sync()


def get_attention_backend() -> str | None:
    """The backend forced on this context: the :func:`attention_backend` context, else the process
    default; ``None`` means automatic selection per call (and per module setting)."""
    _current()
    return _context.get() or _state.default


def available_attention_backends() -> list[str]:
    """Registered backends usable in this process, in automatic-selection order."""
    _current()
    return [spec.name for spec in _state.auto]
