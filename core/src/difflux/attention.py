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

The first call of each backend is its proof: a backend picked automatically that fails to import,
or raises on its first call while a lower-priority backend then succeeds on the same inputs, is
dropped for the rest of the process with one logged line naming it (:func:`broken_attention_backends`
lists them); a backend chosen by name that fails either way raises :class:`AttentionBackendError`
naming it.  Once a backend has worked, its errors reach the caller unchanged.
"""

from __future__ import annotations

import logging
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

logger = logging.getLogger("difflux")

__all__ = [
    "ENV_VAR",
    "AttentionBackendChoice",
    "AttentionBackendError",
    "AttentionFn",
    "attention",
    "attention_backend",
    "attention_backend_spec",
    "available_attention_backends",
    "broken_attention_backends",
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
        self.broken: dict[str, str] = {}  # backends automatic selection dropped: name -> why

    def sync(self) -> None:
        registry = get_registry()
        if registry is self.registry:
            return
        self.fns = {}
        self.broken = {}
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
    """Resolve a backend by name (checked available) and return its function (cached by :func:`_first_call`)."""
    spec = _spec(name)
    why = spec.available()
    if why is not None:
        raise AttentionBackendError(f"attention backend {name!r} (plugin {spec.plugin!r}) is not usable here: {why}")
    try:
        fn = spec.load()
    except Exception as exc:  # ImportError, or anything the kernel module raises while importing
        text = " ".join(str(exc).split())
        raise AttentionBackendError(
            f"attention backend {name!r} (plugin {spec.plugin!r}) cannot be imported from {spec.ref!r}: "
            f"{type(exc).__name__}: {text}"
        ) from exc
    if not callable(fn):
        raise AttentionBackendError(
            f"attention backend {name!r} (plugin {spec.plugin!r}) is registered as {spec.ref!r}, "
            f"which is {type(fn).__name__}, not a function"
        )
    return fn


#: Errors that say the machine is out of something, not that a backend is broken: never a reason to drop one.
_RESOURCE_ERRORS: tuple[type[BaseException], ...] = (MemoryError, torch.OutOfMemoryError)


def _first_call(name: str, fn: AttentionFn, args: tuple[Any, ...], options: dict[str, Any]) -> torch.Tensor:
    """Run the first call of the explicitly chosen backend ``name``; cache it once it has worked.

    :raises AttentionBackendError: the call raised (chained to the backend's error).
    """
    try:
        out = fn(*args, **options)
    except _RESOURCE_ERRORS:
        raise
    except Exception as exc:
        raise _first_call_error(name, exc) from exc
    _state.fns[name] = fn
    return out  # type: ignore[no-any-return]


def _drop(name: str, why: str) -> None:
    """Automatic selection stops offering ``name`` in this process; one log line says so."""
    _state.broken[name] = why
    _state.auto = tuple(s for s in _state.auto if s.name != name)
    logger.warning("difflux: %s; automatic selection falls back to the next available attention backend", why)


def _first_call_error(name: str, exc: Exception) -> AttentionBackendError:
    spec = _state.specs[name]
    text = " ".join(str(exc).split())
    error = AttentionBackendError(
        f"attention backend {name!r} (plugin {spec.plugin!r}) failed on its first call: {type(exc).__name__}: {text}"
    )
    error.__cause__ = exc
    return error


def _automatic(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any, scale: Any, is_causal: bool) -> Any:
    """Automatic selection, the first call of each backend included (see the module docstring)."""
    failed: list[tuple[str, Exception]] = []
    args = (q, k, v, attn_mask, scale, is_causal)
    for spec in _state.auto:
        if spec.name not in _state.unconstrained and spec.check(q, attn_mask, is_causal) is not None:
            continue
        fn = _state.fns.get(spec.name)
        if fn is not None:
            out = fn(*args)
        else:
            try:
                fn = _load(spec.name)
            except AttentionBackendError as exc:  # an import failure says nothing about the inputs
                _drop(spec.name, str(exc))
                continue
            try:
                out = fn(*args)
            except _RESOURCE_ERRORS:
                raise
            except Exception as exc:
                failed.append((spec.name, exc))
                continue
            _state.fns[spec.name] = fn
        for name, error in failed:  # a later backend took these inputs: the earlier ones are broken
            _drop(name, str(_first_call_error(name, error)))
        return out
    if failed:  # every candidate raised on these inputs: they, not the backends, are the likelier culprit
        raise failed[0][1]
    raise AttentionBackendError(_no_backend_message(q, attn_mask, is_causal))


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
    # torch.compile cannot trace ContextVar.get: compiled regions use the per-module / process choice
    # fixed when they were compiled, and an attention_backend() block does not reach inside them.
    context = _context.get() if _context_used and not torch.compiler.is_compiling() else None
    name = context or backend or _state.default
    if name is None:
        spec = _state.auto[0] if _state.auto else None
        if spec is not None and spec.name in _state.unconstrained:  # the common case: one dict look-up
            fn = _state.fns.get(spec.name)
            if fn is not None:
                return fn(q, k, v, attn_mask, scale, is_causal)  # type: ignore[no-any-return]
        return _automatic(q, k, v, attn_mask, scale, is_causal)  # type: ignore[no-any-return]
    fn = _state.fns.get(name)  # type: ignore[assignment]
    proven = fn is not None
    if fn is None:
        fn = _load(name)  # unknown, unusable here, or not importable: AttentionBackendError naming it
    if name not in _state.unconstrained:
        spec = _state.specs[name]
        why = spec.check(q, attn_mask, is_causal)
        if why is not None:
            raise AttentionBackendError(
                f"attention backend {name!r} (plugin {spec.plugin!r}) rejects these inputs: it {why}; "
                "choose another backend or let difflux choose automatically"
            )
    options = name.options if type(name) is AttentionBackendChoice else {}
    if not proven:
        return _first_call(name, fn, (q, k, v, attn_mask, scale, is_causal), options)
    if options:
        return fn(q, k, v, attn_mask, scale, is_causal, **options)  # type: ignore[no-any-return]
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


def broken_attention_backends() -> dict[str, str]:
    """Backends that automatic selection dropped in this process (failed import or first call): name -> why."""
    _current()
    return dict(_state.broken)


def available_attention_backends() -> list[str]:
    """Registered backends usable in this process, in automatic-selection order."""
    _current()
    return [spec.name for spec in _state.auto]
