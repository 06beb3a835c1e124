"""The Flax attention registry: every Flax model calls :func:`attention`, which runs the chosen kernel.

A kernel is a function ``kernel(q, k, v, scale) -> out`` over arrays shaped
``(batch, seq, heads, head_dim)`` (``q``: ``seq_q``; ``k`` and ``v``: ``seq_kv``; one dtype),
returning ``(batch, seq_q, heads, head_dim)`` in ``q``'s dtype. ``scale`` multiplies ``q k^T``
before the softmax (usually ``head_dim ** -0.5``).

Built in (this plugin):

- ``"dot"``: ``softmax(q k^T * scale) v`` with einsum, the softmax in float32 (the default;
  Vaswani et al. 2017, eq. 1). It runs everywhere.
- ``"xla"``: :func:`jax.nn.dot_product_attention` (XLA's fused path).
- ``"cudnn"``: :func:`jax.nn.dot_product_attention` with ``implementation="cudnn"`` (NVIDIA GPUs,
  float16 / bfloat16).
- ``"pallas-flash"``: the FlashAttention kernel of ``jax.experimental.pallas`` (Dao et al. 2022):
  ``pallas.ops.tpu.flash_attention`` on TPU, ``pallas.ops.gpu.attention.mha`` on GPU.
- ``"splash"``: the TPU splash-attention kernel of ``jax.experimental.pallas.ops.tpu``.

The Pallas kernels zero-pad the head dimension to the size they need, and run ``dot`` for
sequence lengths their blocks do not divide (the 77 text tokens of cross-attention).

A third party adds a kernel without editing this plugin, either by calling
:func:`register_attention_kernel` at import time, or through the entry-point group
``difflux_flax.attention`` whose entries are ``register(register_attention_kernel)`` functions,
loaded the first time a kernel is looked up.

Choosing: :func:`set_attention_kernel` (process-wide), the :func:`attention_kernel` context
manager, or ``attention_kernel=`` on a Flax model (per model). The choice is read while JAX
traces, so it is fixed inside a compiled function; ``"auto"`` picks the available kernel of
highest priority.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import importlib
import logging
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any

__all__ = [
    "ENTRY_POINT_GROUP",
    "AttentionKernel",
    "attention",
    "attention_kernel",
    "available_kernels",
    "get_attention_kernel",
    "register_attention_kernel",
    "set_attention_kernel",
]

logger = logging.getLogger("difflux")

#: the entry-point group of third-party Flax attention kernels
ENTRY_POINT_GROUP = "difflux_flax.attention"

KernelFn = Callable[[Any, Any, Any, float], Any]


@dataclasses.dataclass
class AttentionKernel:
    """A registered kernel: its function (or lazy ``"module:function"``), when it runs, and its priority.

    :ivar available: ``available() -> str | None``: ``None`` when the kernel can run in this process
        (right JAX version and device), else the reason it cannot.
    :ivar priority: the order in which ``"auto"`` tries kernels (highest first).
    :ivar max_head_dim: the largest head dimension the kernel takes (``None``: any).
    """

    name: str
    fn: KernelFn | str
    available: Callable[[], str | None] | None = None
    priority: int = 0
    max_head_dim: int | None = None

    def load(self) -> KernelFn:
        if isinstance(self.fn, str):
            module, _, attr = self.fn.partition(":")
            self.fn = getattr(importlib.import_module(module), attr)
        fn: KernelFn = self.fn  # type: ignore[assignment]
        return fn

    def why_not(self, head_dim: int | None = None) -> str | None:
        if self.max_head_dim is not None and head_dim is not None and head_dim > self.max_head_dim:
            return f"head_dim {head_dim} is larger than {self.max_head_dim}"
        return None if self.available is None else self.available()


_KERNELS: dict[str, AttentionKernel] = {}
_entry_points_loaded = False
_process_choice = "dot"
_context_choice: contextvars.ContextVar[str | None] = contextvars.ContextVar("difflux_flax_attention", default=None)


def register_attention_kernel(
    name: str,
    fn: KernelFn | str,
    *,
    available: Callable[[], str | None] | None = None,
    priority: int = 0,
    max_head_dim: int | None = None,
    replace: bool = False,
) -> None:
    """Add a kernel under ``name`` (see the module docstring for the kernel's signature).

    :raises ValueError: if ``name`` is empty or taken (unless ``replace``), or ``fn`` is neither a
        callable nor a ``"module:function"`` string.
    """
    if not isinstance(name, str) or not name.strip() or name == "auto":
        raise ValueError(f"register_attention_kernel: name must be a non-empty string other than 'auto', got {name!r}")
    if not callable(fn) and not (isinstance(fn, str) and ":" in fn):
        raise ValueError(f"register_attention_kernel({name!r}): pass a function or a 'module:function' string")
    if name in _KERNELS and not replace:
        raise ValueError(f"the Flax attention kernel {name!r} is already registered; pass replace=True to override")
    _KERNELS[name] = AttentionKernel(name, fn, available, priority, max_head_dim)


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()(register_attention_kernel)
        except Exception as exc:  # one broken third-party kernel must not break the others
            logger.warning("difflux-flax: skipping attention kernels of %r: %s: %s", ep.name, type(exc).__name__, exc)


def available_kernels() -> dict[str, str | None]:
    """Every registered kernel name -> ``None`` when it can run here, else the reason it cannot."""
    _load_entry_points()
    return {name: k.why_not() for name, k in sorted(_KERNELS.items())}


def set_attention_kernel(name: str) -> None:
    """Choose the kernel for this process (``"auto"``: the available one of highest priority).

    :raises KeyError: if no kernel has that name.
    """
    _check_name(name)
    global _process_choice
    _process_choice = name


@contextlib.contextmanager
def attention_kernel(name: str) -> Iterator[None]:
    """Use kernel ``name`` inside the ``with`` block (in this thread / task): ``with attention_kernel("xla"): ...``."""
    _check_name(name)
    token = _context_choice.set(name)
    try:
        yield
    finally:
        _context_choice.reset(token)


def _check_name(name: str) -> None:
    _load_entry_points()
    if name != "auto" and name not in _KERNELS:
        raise KeyError(
            f"no Flax attention kernel named {name!r}; registered: {', '.join(sorted(_KERNELS))} (or 'auto')"
        )


def get_attention_kernel(name: str | None = None, head_dim: int | None = None) -> AttentionKernel:
    """The kernel to run: ``name``, else the context's choice, else the process choice.

    :raises KeyError: for an unknown name.
    :raises RuntimeError: when the chosen kernel cannot run here (the reason is in the message).
    """
    _load_entry_points()
    chosen = name or _context_choice.get() or _process_choice
    if chosen == "auto":
        for kernel in sorted(_KERNELS.values(), key=lambda k: -k.priority):
            if kernel.why_not(head_dim) is None:
                return kernel
        raise RuntimeError("no registered Flax attention kernel is available here")
    _check_name(chosen)
    kernel = _KERNELS[chosen]
    why = kernel.why_not(head_dim)
    if why is not None:
        raise RuntimeError(f"the Flax attention kernel {chosen!r} cannot run here: {why}; choose another (e.g. 'dot')")
    return kernel


def attention(q: Any, k: Any, v: Any, scale: float | None = None, kernel: str | None = None) -> Any:
    """Multi-head attention of ``(batch, seq, heads, head_dim)`` arrays through the chosen kernel.

    :param scale: multiplies ``q k^T``; default ``head_dim ** -0.5``.
    :param kernel: a kernel name for this call (default: the context / process choice).
    :raises ValueError: if the arrays are not 4-D or their batch / heads / head_dim disagree.
    """
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention: q, k, v must be (batch, seq, heads, head_dim), got {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit together")
    head_dim = int(q.shape[-1])
    scale = head_dim**-0.5 if scale is None else scale
    return get_attention_kernel(kernel, head_dim).load()(q, k, v, scale)


# -- the built-in kernels ------------------------------------------------------------------------


def dot_product(q: Any, k: Any, v: Any, scale: float) -> Any:
    """softmax(q k^T * scale) v, the scores and softmax in float32 (Vaswani et al. 2017, eq. 1)."""
    import jax
    import jax.numpy as jnp

    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def xla(q: Any, k: Any, v: Any, scale: float) -> Any:
    """:func:`jax.nn.dot_product_attention` (XLA)."""
    import jax

    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="xla")


def cudnn(q: Any, k: Any, v: Any, scale: float) -> Any:
    """:func:`jax.nn.dot_product_attention` with the cuDNN fused kernel (NVIDIA GPU, fp16 / bf16)."""
    import jax

    return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")


def _platform() -> str:
    import jax

    return str(jax.default_backend())


def _needs(platform: str, module: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            here = _platform()
        except Exception as exc:  # no backend at all
            return f"JAX has no backend: {exc}"
        if here != platform:
            return f"needs a {platform.upper()} device; JAX's default backend here is {here!r}"
        try:
            importlib.import_module(module)
        except Exception as exc:
            return f"this JAX install has no {module} ({type(exc).__name__}: {exc})"
        return None

    return check


def _flash_available() -> str | None:
    try:
        here = _platform()
    except Exception as exc:
        return f"JAX has no backend: {exc}"
    if here == "tpu":
        return _needs("tpu", "jax.experimental.pallas.ops.tpu.flash_attention")()
    if here == "gpu":
        return _needs("gpu", "jax.experimental.pallas.ops.gpu.attention")()
    return f"needs a TPU or GPU device; JAX's default backend here is {here!r}"


def _block(*lengths: int, sizes: tuple[int, ...] = (128, 64, 32, 16)) -> int | None:
    """The largest block size that divides every sequence length (``None``: none does)."""
    return next((b for b in sizes if all(n % b == 0 for n in lengths)), None)


def _pad_head_dim(multiple_of: int | None, *arrays: Any) -> tuple[int, list[Any]]:
    """Zero-pad the head dimension to a power of two (``multiple_of``: a multiple of it instead); zero columns
    change neither ``q k^T`` nor, once sliced off, the output."""
    import jax.numpy as jnp

    d = int(arrays[0].shape[-1])
    target = -(-d // multiple_of) * multiple_of if multiple_of else max(16, 1 << (d - 1).bit_length())
    if target == d:
        return d, list(arrays)
    pad = ((0, 0), (0, 0), (0, 0), (0, target - d))
    return d, [jnp.pad(a, pad) for a in arrays]


def flash_gpu(q: Any, k: Any, v: Any, scale: float, interpret: bool = False) -> Any:
    """FlashAttention (Dao et al. 2022), the Triton kernel of ``jax.experimental.pallas.ops.gpu.attention``.

    The head dimension is zero-padded to a power of two; sequence lengths that no block size of 16-128
    divides (e.g. 77 text tokens) run :func:`dot_product` instead. ``interpret`` runs the kernel in the
    Pallas interpreter (any device; for tests).
    """
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    block = _block(q.shape[1], k.shape[1])
    if block is None:
        return dot_product(q, k, v, scale)
    d, (qp, kp, vp) = _pad_head_dim(None, q, k, v)
    sizes = gpu_attention.BlockSizes(block_q=block, block_k=block)
    out = gpu_attention.mha(qp, kp, vp, None, sm_scale=scale, block_sizes=sizes, interpret=interpret)
    return out[..., :d]


def flash_tpu(q: Any, k: Any, v: Any, scale: float) -> Any:
    """FlashAttention, the TPU kernel of ``jax.experimental.pallas.ops.tpu.flash_attention`` (head dimension
    zero-padded to a multiple of 128; sequence lengths that 128 does not divide run :func:`dot_product`)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

    if _block(q.shape[1], k.shape[1], sizes=(128,)) is None:
        return dot_product(q, k, v, scale)
    d, (qp, kp, vp) = _pad_head_dim(128, q, k, v)
    out = tpu_flash.flash_attention(
        qp.transpose(0, 2, 1, 3), kp.transpose(0, 2, 1, 3), vp.transpose(0, 2, 1, 3), sm_scale=scale
    )
    return out.transpose(0, 2, 1, 3)[..., :d]


def pallas_flash(q: Any, k: Any, v: Any, scale: float) -> Any:
    """FlashAttention from ``jax.experimental.pallas``: :func:`flash_tpu` on TPU, :func:`flash_gpu` on GPU."""
    return flash_tpu(q, k, v, scale) if _platform() == "tpu" else flash_gpu(q, k, v, scale)


def splash(q: Any, k: Any, v: Any, scale: float, interpret: bool = False) -> Any:
    """The TPU splash-attention kernel (``jax.experimental.pallas.ops.tpu.splash_attention``), full mask.

    Head dimension zero-padded to a multiple of 128; sequence lengths that 128 does not divide run
    :func:`dot_product`. ``interpret`` runs it in the Pallas interpreter (any device; for tests).
    """
    import jax
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    _, seq_q, heads, _ = q.shape
    seq_kv = k.shape[1]
    if _block(seq_q, seq_kv, sizes=(128,)) is None:
        return dot_product(q, k, v, scale)
    d, (qp, kp, vp) = _pad_head_dim(128, q, k, v)
    mask = sm.MultiHeadMask([sm.FullMask((seq_q, seq_kv)) for _ in range(heads)])
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
    qh = (qp * scale).transpose(0, 2, 1, 3)
    out = jax.vmap(kernel)(qh, kp.transpose(0, 2, 1, 3), vp.transpose(0, 2, 1, 3))
    return out.transpose(0, 2, 1, 3)[..., :d]


register_attention_kernel("dot", dot_product, priority=0)
register_attention_kernel("xla", xla, priority=1)
register_attention_kernel("cudnn", cudnn, available=_needs("gpu", "jax.nn"), priority=5, max_head_dim=128)
register_attention_kernel("pallas-flash", pallas_flash, available=_flash_available, priority=10)
register_attention_kernel(
    "splash", splash, available=_needs("tpu", "jax.experimental.pallas.ops.tpu.splash_attention"), priority=20
)
