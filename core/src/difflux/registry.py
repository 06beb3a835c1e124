"""The plugin registry: pluggy over the entry-point group ``difflux``, loaded lazily once.

Environment variables (read when the registry is first built):

- ``DIFFLUX_LOAD_PLUGINS``: comma-separated entry-point names; only these plugins load.
- ``DIFFLUX_DISABLE_PLUGIN_AUTOLOAD``: when set (non-empty, not ``0``), no entry point loads
  unless ``DIFFLUX_LOAD_PLUGINS`` names it.
- ``DIFFLUX_TRACE_PLUGINS``: when set, every hook call is traced to stderr.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import pluggy

from . import _providers, hookspecs
from .errors import LoadError, PluginConflictError, PluginError, UnknownClassError

__all__ = [
    "ENTRY_POINT_GROUP",
    "AttentionBackendSpec",
    "PluginInfo",
    "Registration",
    "Registry",
    "SchedulerAlias",
    "get_registry",
    "import_ref",
    "reset_registry",
]

logger = logging.getLogger("difflux")

ENTRY_POINT_GROUP = "difflux"
CORE_PLUGIN = "difflux"


def import_ref(ref: str) -> Any:
    """Import ``"package.module:Attr.sub"`` and return the attribute."""
    module_name, _, attr = ref.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def _ref_name(ref: Any) -> str:
    if isinstance(ref, str):
        if ":" not in ref:
            raise PluginError(f"lazy reference {ref!r} must look like 'package.module:ClassName'")
        return ref.rpartition(":")[2].rpartition(".")[2]
    name = getattr(ref, "__name__", None)
    if not isinstance(name, str):
        raise PluginError(f"cannot tell the name of {ref!r}; pass name=")
    return name


@dataclasses.dataclass
class Registration:
    """One registered thing: a lazy reference or the object, and the plugin that registered it."""

    kind: str
    name: str
    ref: Any
    plugin: str

    def load(self) -> Any:
        if isinstance(self.ref, str):
            try:
                self.ref = import_ref(self.ref)
            except (ImportError, AttributeError) as exc:
                raise PluginError(
                    f"plugin {self.plugin!r} registered {self.kind} {self.name!r} as {self.ref!r}, "
                    f"which cannot be imported: {exc}"
                ) from exc
        return self.ref


@dataclasses.dataclass
class SchedulerAlias:
    """A sampler name people use (``"DPM++ 2M Karras"``) mapped to a scheduler and its options."""

    alias: str
    scheduler: str
    overrides: Mapping[str, Any]
    plugin: str


@dataclasses.dataclass
class AttentionBackendSpec:
    """An attention kernel and the inputs it accepts."""

    name: str
    ref: Any
    plugin: str
    priority: int = 0
    devices: frozenset[str] | None = None
    dtypes: frozenset[str] | None = None
    supports_mask: bool = True
    supports_causal: bool = True
    max_head_dim: int | None = None
    requires: tuple[str, ...] = ()
    #: ``probe() -> str | None`` (or a lazy ``"module:function"`` reference): why the backend is
    #: unusable in this process (no CUDA device, too old a GPU, library built without kernels),
    #: ``None`` when usable. Called by :meth:`available` after the ``requires`` check.
    probe: Any = None
    #: ``accepts(q, attn_mask, is_causal) -> str | None`` (or a lazy reference): input constraints
    #: the fields above cannot state (head dim a multiple of 8, dtype per device), returning the
    #: broken constraint in the words of :meth:`check`, ``None`` when the inputs fit.
    accepts: Any = None

    def available(self) -> str | None:
        """``None`` when usable in this process, else why not."""
        import importlib.util

        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"needs the module {module!r}, which is not installed"
        if self.probe is not None:
            if isinstance(self.probe, str):
                self.probe = import_ref(self.probe)
            return self.probe()  # type: ignore[no-any-return]
        return None

    def check(self, q: Any, attn_mask: Any = None, is_causal: bool = False) -> str | None:
        """``None`` when this backend accepts the inputs, else the constraint they break."""
        if self.devices is not None and q.device.type not in self.devices:
            return f"runs on {sorted(self.devices)}, not {q.device.type}"
        if self.dtypes is not None and str(q.dtype).removeprefix("torch.") not in self.dtypes:
            return f"takes dtypes {sorted(self.dtypes)}, not {q.dtype}"
        if attn_mask is not None and not self.supports_mask:
            return "takes no attention mask"
        if is_causal and not self.supports_causal:
            return "has no causal mode"
        if self.max_head_dim is not None and q.shape[-1] > self.max_head_dim:
            return f"takes head dim up to {self.max_head_dim}, not {q.shape[-1]}"
        if self.accepts is not None:
            if isinstance(self.accepts, str):
                self.accepts = import_ref(self.accepts)
            return self.accepts(q, attn_mask, is_causal)  # type: ignore[no-any-return]
        return None

    def load(self) -> Callable[..., Any]:
        if isinstance(self.ref, str):
            self.ref = import_ref(self.ref)
        return self.ref  # type: ignore[no-any-return]


@dataclasses.dataclass
class PluginInfo:
    """A loaded plugin: its entry-point name, distribution, version and what it registered."""

    name: str
    distribution: str
    version: str
    module: str
    registered: list[tuple[str, str]] = dataclasses.field(default_factory=list)


class RegisterPipeline(Protocol):
    def __call__(self, ref: Any, *, name: str | None = None, aliases: Iterable[str] = ()) -> None: ...


class RegisterComponent(Protocol):
    def __call__(self, ref: Any, *, name: str | None = None, library: str = "diffusers") -> None: ...


class RegisterScheduler(Protocol):
    def __call__(
        self, ref: Any, *, name: str | None = None, aliases: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None: ...


class RegisterAttentionBackend(Protocol):
    def __call__(self, name: str, ref: Any, **constraints: Any) -> None: ...


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


class Registry:
    """What every loaded plugin registered. Build it with :func:`get_registry`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("difflux")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.skipped: dict[str, str] = {}
        self.pipelines: dict[str, Registration] = {}
        self.components: dict[tuple[str, str], Registration] = {}
        self.schedulers: dict[str, Registration] = {}
        self.scheduler_aliases: dict[str, SchedulerAlias] = {}
        self.attention_backends: dict[str, AttentionBackendSpec] = {}
        self._tracing = False

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # -- loading ---------------------------------------------------------------------------

    def load(self, extra_plugins: Iterable[tuple[str, Any]] = ()) -> None:
        from . import __version__, _builtin

        self._tracing = _env_flag("DIFFLUX_TRACE_PLUGINS")
        if self._tracing:
            self.pm.trace.root.setwriter(lambda text: sys.stderr.write(f"difflux trace: {text}"))
            self.pm.enable_tracing()
        self._add_plugin(CORE_PLUGIN, _builtin, "difflux", __version__)
        allow = {n.strip() for n in os.environ.get("DIFFLUX_LOAD_PLUGINS", "").split(",") if n.strip()}
        autoload = not _env_flag("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD")
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if (allow and ep.name not in allow) or (not allow and not autoload):
                self.skipped[ep.name] = "not allowed by DIFFLUX_LOAD_PLUGINS / DIFFLUX_DISABLE_PLUGIN_AUTOLOAD"
                continue
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in self.plugins:
                raise PluginConflictError(
                    f"two plugins use the entry-point name {ep.name!r}: "
                    f"{self.plugins[ep.name].distribution} and {dist}"
                )
            try:
                module = ep.load()
            except ImportError as exc:
                self.skipped[ep.name] = f"failed to import: {exc}"
                logger.warning("difflux: skipping plugin %r (%s %s): failed to import: %s", ep.name, dist, version, exc)
                continue
            self._add_plugin(ep.name, module, dist, version)
        for name, module in extra_plugins:
            self._add_plugin(name, module, getattr(module, "__name__", name), "")
        self.pm.check_pending()
        self._collect()

    def _add_plugin(self, name: str, module: Any, dist: str, version: str) -> None:
        try:
            self.pm.register(module, name=name)
        except ValueError as exc:
            raise PluginError(f"plugin {name!r} ({dist}) could not be registered: {exc}") from exc
        self.plugins[name] = PluginInfo(name, dist, version, getattr(module, "__name__", repr(module)))

    def _collect(self) -> None:
        calls: list[tuple[str, Callable[[str], Any]]] = [
            ("difflux_register_pipelines", self._pipeline_registrar),
            ("difflux_register_components", self._component_registrar),
            ("difflux_register_schedulers", self._scheduler_registrar),
            ("difflux_register_attention_backends", self._backend_registrar),
        ]
        for hook_name, make_register in calls:
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                if self._tracing:
                    sys.stderr.write(f"difflux trace: {hook_name} -> plugin {impl.plugin_name!r}\n")
                kwargs = {"register": make_register(impl.plugin_name)}
                try:
                    impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc!r}") from exc

    def _note(self, plugin: str, kind: str, name: str) -> None:
        self.plugins[plugin].registered.append((kind, name))

    def _clash(self, kind: str, name: str, first: str, second: str) -> PluginConflictError:
        d1, d2 = self.plugins[first].distribution, self.plugins[second].distribution
        return PluginConflictError(
            f"{kind} {name!r} is registered by two plugins: {first!r} ({d1}) and {second!r} ({d2}); "
            f"uninstall one, or choose with DIFFLUX_LOAD_PLUGINS"
        )

    def _put(self, table: dict[Any, Registration], key: Any, reg: Registration) -> None:
        old = table.get(key)
        if old is not None and old.plugin != reg.plugin:
            raise self._clash(reg.kind, reg.name, old.plugin, reg.plugin)
        table[key] = reg
        self._note(reg.plugin, reg.kind, reg.name if not isinstance(key, tuple) else f"{key[0]}.{key[1]}")

    def _pipeline_registrar(self, plugin: str) -> RegisterPipeline:
        def register(ref: Any, *, name: str | None = None, aliases: Iterable[str] = ()) -> None:
            name = name or _ref_name(ref)
            for key in (name, *aliases):
                self._put(self.pipelines, key, Registration("pipeline", key, ref, plugin))

        return register

    def _component_registrar(self, plugin: str) -> RegisterComponent:
        def register(ref: Any, *, name: str | None = None, library: str = "diffusers") -> None:
            name = name or _ref_name(ref)
            self._put(self.components, (library, name), Registration("component", name, ref, plugin))

        return register

    def _scheduler_registrar(self, plugin: str) -> RegisterScheduler:
        def register(
            ref: Any, *, name: str | None = None, aliases: Mapping[str, Mapping[str, Any]] | None = None
        ) -> None:
            name = name or _ref_name(ref)
            self._put(self.schedulers, name, Registration("scheduler", name, ref, plugin))
            for alias, overrides in (aliases or {}).items():
                old = self.scheduler_aliases.get(alias)
                if old is not None and old.plugin != plugin:
                    raise self._clash("scheduler alias", alias, old.plugin, plugin)
                self.scheduler_aliases[alias] = SchedulerAlias(alias, name, dict(overrides), plugin)
                self._note(plugin, "scheduler alias", f"{alias} -> {name}")

        return register

    def _backend_registrar(self, plugin: str) -> RegisterAttentionBackend:
        def register(name: str, ref: Any, **constraints: Any) -> None:
            old = self.attention_backends.get(name)
            if old is not None and old.plugin != plugin:
                raise self._clash("attention backend", name, old.plugin, plugin)
            for key in ("devices", "dtypes"):
                if constraints.get(key) is not None:
                    constraints[key] = frozenset(str(x).removeprefix("torch.") for x in constraints[key])
            if "requires" in constraints:
                constraints["requires"] = tuple(constraints["requires"])
            try:
                spec = AttentionBackendSpec(name=name, ref=ref, plugin=plugin, **constraints)
            except TypeError as exc:
                raise PluginError(f"plugin {plugin!r} registered attention backend {name!r}: {exc}") from None
            self.attention_backends[name] = spec
            self._note(plugin, "attention backend", name)

        return register

    # -- look-ups ------------------------------------------------------------------------

    def pipeline_class(self, name: str, where: str = "") -> Any:
        reg = self.pipelines.get(name)
        if reg is None:
class RegisterOffloadStrategy(Protocol):
    def __call__(self, name: str, ref: Any) -> None: ...


            raise self.unknown("pipeline", name, where=where)
        return reg.load()

    def component_class(self, library: str, name: str) -> Any | None:
        """The registered class for a ``[library, ClassName]`` entry, or ``None``."""
        reg = self.components.get((library, name))
        # Diffusers writes "deprecated" as the library of its deprecated classes (KarrasVeScheduler)
        if reg is None and library in ("diffusers", "difflux", "deprecated"):
            reg = self.schedulers.get(name) or self.components.get(("diffusers", name))
        return reg.load() if reg is not None else None

    def scheduler_class(self, name: str, where: str = "") -> Any:
        reg = self.schedulers.get(name)
        if reg is None:
            raise self.unknown("scheduler", name, where=where)
        return reg.load()

    def resolve_scheduler(self, name_or_alias: str) -> tuple[Any, dict[str, Any]]:
        """A scheduler class and config overrides for a class name or a sampler alias."""
        if name_or_alias in self.schedulers:
            return self.scheduler_class(name_or_alias), {}
        folded = {a.casefold(): a for a in self.scheduler_aliases}
        #: offload strategy name -> ``strategy(models, plan) -> Offloaded`` (see :mod:`difflux.offload`)
        self.offload_strategies: dict[str, Registration] = {}
        alias = self.scheduler_aliases.get(folded.get(name_or_alias.casefold(), ""))
        if alias is None:
            raise self.unknown("scheduler", name_or_alias)
        return self.scheduler_class(alias.scheduler), dict(alias.overrides)

    def resolve_pretrained(self, name_or_path: str | os.PathLike[str], options: Any) -> Path:
        """A local folder for a repo id or path, through the ``difflux_resolve_pretrained`` hook."""
        folder = self.pm.hook.difflux_resolve_pretrained(name_or_path=str(name_or_path), options=options)
        if folder is None:
            hint = "" if "difflux-hub" in {p.distribution for p in self.plugins.values()} else (
                "; to download repo ids from the Hub, pip install difflux-hub"
            )
            raise LoadError(f"{name_or_path!r} is not an existing local folder{hint}")
        return Path(folder)

    def owner(self, cls: Any) -> PluginInfo | None:
        """The plugin that registered ``cls`` (as an object or a lazy reference)."""
        tables: list[Iterable[Registration]] = [
            self.pipelines.values(),
            self.components.values(),
            self.schedulers.values(),
        ]
        for table in tables:
            for reg in table:
                if reg.ref is cls or reg.ref == f"{cls.__module__}:{cls.__qualname__}":
                    return self.plugins.get(reg.plugin)
        return None

    def unknown(self, kind: str, name: str, library: str = "diffusers", where: str = "") -> UnknownClassError:
        """The error for a class that no installed plugin provides, naming what to install."""
        place = f" ({where})" if where else ""
        dist = "difflux-transformers" if library == "transformers" else _providers.PROVIDERS.get(name)
        if dist is not None:
            hint = f"it is provided by the distribution {dist!r}: pip install {dist}"
        else:
            hint = "install the plugin distribution that provides it; `difflux plugins` lists what is installed"
        return UnknownClassError(f"no installed difflux plugin provides the {kind} {library}.{name}{place}; {hint}")


_registry: Registry | None = None
_lock = threading.RLock()


def get_registry() -> Registry:
    """The process-wide registry, built on first use (entry points load then, once)."""
    global _registry
    if _registry is None:
        with _lock:
            if _registry is None:
                registry = Registry()
                registry.load()
                _registry = registry
    return _registry


def reset_registry(extra_plugins: Iterable[tuple[str, Any]] | None = None) -> Registry | None:
    """Drop the registry so the next use rebuilds it; with ``extra_plugins``, build it now with them.

    Tests use this to register throwaway plugins (``[("name", module_or_object)]``).
    """
    global _registry
    with _lock:
        _registry = None
        if extra_plugins is not None:
            registry = Registry()
            registry.load(extra_plugins)
            _registry = registry
    return _registry
            ("difflux_register_offload_strategies", self._offload_registrar),
    def _offload_registrar(self, plugin: str) -> RegisterOffloadStrategy:
        def register(name: str, ref: Any) -> None:
            if not isinstance(name, str) or not name.strip():
                raise PluginError(
                    f"plugin {plugin!r} registered an offload strategy named {name!r}; "
                    "a name must be a non-empty string"
                )
            if not (callable(ref) or (isinstance(ref, str) and ":" in ref)):
                raise PluginError(f"plugin {plugin!r} registered offload strategy {name!r} as {ref!r}; "
                                  "pass a callable or a lazy 'package.module:function' string")
            self._put(self.offload_strategies, name, Registration("offload strategy", name, ref, plugin))

        return register

    def offload_strategy(self, name: str) -> Any:
        """The registered offload strategy ``name`` (a ``ConfigError`` listing the registered ones)."""
        from .errors import ConfigError

        reg = self.offload_strategies.get(name)
        if reg is None:
            known = ", ".join(sorted(self.offload_strategies)) or "none"
            raise ConfigError(f"unknown offload strategy {name!r}; registered strategies: {known}")
        return reg.load()

