"""Regional compilation: ``torch.compile`` each repeated block, not the whole model.

A UNet is a few block classes repeated (``ResnetBlock2D``, the spatial transformer ...). Each
instance's ``__call__`` is compiled with ``nn.Module.compile``; every instance shares one code
object, and torch inlines module parameters as graph inputs, so instances of a class with the
same shapes share one compiled graph. The spatial dims of a block's input are marked dynamic
(``torch._dynamo.maybe_mark_dynamic``), so a second resolution, or the next UNet level, reuses
the graph instead of compiling another. Compile time is that of a few blocks, not of the model.

A block that torch cannot trace (a custom attention backend, a context manager used inside
it) runs eager, with one warning naming the class and the reason; the rest stay compiled.

Compile cache: with ``cache_dir=``, the compiled artefacts (``torch.compiler.save_cache_artifacts``,
the "mega-cache") are written after the first forward and loaded by the next process that
optimises the same model, so it skips inductor's code generation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from difflux.optimize import OptimizeContext, offload_reason

__all__ = ["REPEATED_BLOCKS", "compile_regions", "compiled_regions", "regional_compile"]

logger = logging.getLogger("difflux")

#: Block classes compiled as regions when the model does not name its own (``_repeated_blocks``).
#: The walk stops at the first match, so a spatial transformer is compiled whole, with its inner
#: transformer blocks.
REPEATED_BLOCKS: tuple[str, ...] = (
    "ResnetBlock2D",
    "SpatialTransformer2D",
    "Transformer2DModel",
    "BasicTransformerBlock",
    "Attention",
)

_DYNAMO_FAILURES: tuple[type[BaseException], ...] = (
    torch._dynamo.exc.Unsupported,
    torch._dynamo.exc.BackendCompilerFailed,
)


class _ClassState:
    """Whether a block class fell back to eager (shared by its instances), and why."""

    def __init__(self) -> None:
        self.failed: str | None = None
        self.lock = threading.Lock()


class _Region:
    """A compiled block call that marks spatial dims dynamic and falls back to eager when torch cannot trace it."""

    def __init__(
        self, compiled: Callable[..., Any], eager: Callable[..., Any], state: _ClassState, name: str, dynamic: bool
    ) -> None:
        self.compiled = compiled
        self.eager = eager
        self.state = state
        self.name = name
        self.dynamic = dynamic

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.state.failed is not None:
            return self.eager(*args, **kwargs)
        if self.dynamic and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            # (batch, channels, height, width): height and width; (batch, tokens, dim): tokens
            for dim in (2, 3) if x.ndim == 4 else (1,) if x.ndim == 3 else ():
                torch._dynamo.maybe_mark_dynamic(x, dim)
        try:
            return self.compiled(*args, **kwargs)
        except _DYNAMO_FAILURES as exc:
            with self.state.lock:
                if self.state.failed is None:
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    self.state.failed = reason
                    logger.warning(
                        "difflux optimize: regional_compile: %s runs eager: torch.compile cannot trace it (%s)",
                        self.name,
                        reason,
                    )
            return self.eager(*args, **kwargs)


#: Graphs per block class: weights' shapes are static, so each channel width of a class is a
#: graph (an SD1.5 UNet has 12 widths of ResnetBlock2D; torch's default limit is 8).
RECOMPILE_LIMIT = 64


def _raise_recompile_limit(limit: int) -> None:
    config = torch._dynamo.config
    if config.recompile_limit < limit:
        logger.info(
            "difflux optimize: raising torch._dynamo.config.recompile_limit from %d to %d "
            "(one graph per channel width of each compiled block class)",
            config.recompile_limit,
            limit,
        )
        config.recompile_limit = limit
    if config.accumulated_recompile_limit < 4 * limit:
        config.accumulated_recompile_limit = 4 * limit


def compiled_regions(model: torch.nn.Module, names: tuple[str, ...] | None = None) -> Iterator[torch.nn.Module]:
    """The outermost submodules of ``model`` whose class name is in ``names`` (default: the model's
    ``_repeated_blocks``, else :data:`REPEATED_BLOCKS`)."""
    wanted = set(names or getattr(model, "_repeated_blocks", None) or REPEATED_BLOCKS)

    def walk(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        for child in module.children():
            if type(child).__name__ in wanted:
                yield child
            else:
                yield from walk(child)

    return walk(model)


def compile_regions(
    model: torch.nn.Module,
    *,
    backend: str | Callable[..., Any] = "inductor",
    mode: str | None = None,
    dynamic: bool = True,
    blocks: tuple[str, ...] | None = None,
) -> list[torch.nn.Module]:
    """Compile every repeated block of ``model`` in place; returns the compiled blocks.

    :param backend: the ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` traces without
        code generation, for tests).
    :param mode: the ``torch.compile`` mode (``None``, ``"max-autotune-no-cudagraphs"`` ...).
    :param dynamic: mark the spatial / token dims of each block's input dynamic, so one graph
        serves every resolution; ``False`` compiles a graph per shape.
    :param blocks: class names to compile (default: the model's ``_repeated_blocks`` or
        :data:`REPEATED_BLOCKS`).
    """
    _raise_recompile_limit(RECOMPILE_LIMIT)
    states: dict[type, _ClassState] = {}
    done = []
    for block in compiled_regions(model, blocks):
        if isinstance(getattr(block, "_compiled_call_impl", None), _Region):
            continue
        block.compile(backend=backend, mode=mode, fullgraph=True, dynamic=None if dynamic else False)
        compiled = block._compiled_call_impl
        if compiled is None:
            raise RuntimeError(f"compile_regions: nn.Module.compile() left no compiled call on {type(block).__name__}")
        state = states.setdefault(type(block), _ClassState())
        # nn.Module.__call__ calls _compiled_call_impl when set: put the fallback in front of it
        block._compiled_call_impl = _Region(compiled, block._call_impl, state, type(block).__name__, dynamic)
        done.append(block)
    return done


def prime_attention(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Run each attention backend ``model`` uses once, eagerly, on a tiny input.

    The first call of a backend resolves and imports it (``difflux.attention`` builds its state
    from the plugin registry then): work torch.compile must not trace. After this, a compiled
    block sees only the cached dispatch.
    """
    from difflux.attention import attention

    names = {getattr(m, "attention_backend", None) for m in model.modules() if hasattr(m, "attention_backend")}
    q = torch.zeros(1, 1, 2, 8, device=device, dtype=dtype)
    for name in names or {None}:
        try:
            attention(q, q, q, backend=name)
        except Exception as exc:  # a backend that rejects this input: the compiled call will say so
            logger.debug("difflux optimize: priming attention backend %r failed: %s", name, exc)


# -- the compile cache ----------------------------------------------------------------------------


def _cache_key(ctx: OptimizeContext, settings: dict[str, Any]) -> str:
    config = getattr(ctx.model, "config", None)
    try:
        config_text = json.dumps(dict(config) if config is not None else {}, sort_keys=True, default=str)
    except (TypeError, ValueError):
        config_text = repr(config)
    parts = [torch.__version__, type(ctx.model).__qualname__, config_text, str(ctx.dtype), ctx.device.type]
    parts += [f"{k}={settings[k]}" for k in sorted(settings)]
    if ctx.device.type == "cuda":
        parts.append(torch.cuda.get_device_name(ctx.device))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def use_compile_cache(model: torch.nn.Module, path: Path) -> bool:
    """Load ``path``'s artefacts when it exists (returns ``True``); otherwise save them there after
    ``model``'s first forward (returns ``False``)."""
    if path.is_file():
        torch.compiler.load_cache_artifacts(path.read_bytes())
        logger.info("difflux optimize: loaded compiled artefacts from %s", path)
        return True

    handle: Any = None

    def save(_module: torch.nn.Module, _args: Any, _out: Any) -> None:
        handle.remove()
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            logger.info("difflux optimize: no compiled artefacts to save to %s", path)
            return
        _write_atomic(path, saved[0])
        logger.info("difflux optimize: saved compiled artefacts (%d bytes) to %s", len(saved[0]), path)

    handle = model.register_forward_hook(save)
    return False


# -- the registered optimisation ------------------------------------------------------------------


def regional_compile(ctx: OptimizeContext) -> str | None:
    """``torch.compile`` each repeated block (see the module docstring).

    Options read from ``ctx.options``: ``compile_backend`` (default ``"inductor"``),
    ``compile_mode`` (default ``None``), ``dynamic`` (default ``True``), ``blocks`` (class names),
    ``cache_dir`` (a folder for the compile cache; default none).
    """
    why = offload_reason(ctx.model)
    if why is not None:
        return why
    backend = ctx.options.get("compile_backend", "inductor")
    mode = ctx.options.get("compile_mode")
    dynamic = bool(ctx.options.get("dynamic", True))
    blocks = ctx.options.get("blocks")
    if not any(True for _ in compiled_regions(ctx.model, blocks)):
        names = blocks or getattr(ctx.model, "_repeated_blocks", None) or REPEATED_BLOCKS
        return f"{type(ctx.model).__name__} has no repeated block to compile (looked for {', '.join(names)})"
    cache_dir = ctx.options.get("cache_dir")
    if cache_dir is not None and backend == "inductor":
        settings = {"backend": backend, "mode": mode, "dynamic": dynamic, "blocks": blocks, "opt": ctx.mode}
        use_compile_cache(ctx.model, Path(cache_dir) / f"{type(ctx.model).__name__}-{_cache_key(ctx, settings)}.bin")
    prime_attention(ctx.model, ctx.device, ctx.dtype)
    compile_regions(ctx.model, backend=backend, mode=mode, dynamic=dynamic, blocks=blocks)
    return None
