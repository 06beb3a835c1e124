"""The plugin registry: pluggy over the entry-point group ``difflux``, loaded lazily once.

Environment variables (read when the registry is first built):

- ``DIFFLUX_LOAD_PLUGINS``: comma-separated entry-point names; only these plugins load.
- ``DIFFLUX_DISABLE_PLUGIN_AUTOLOAD``: when set (non-empty, not ``0``), no entry point loads
  unless ``DIFFLUX_LOAD_PLUGINS`` names it.
- ``DIFFLUX_TRACE_PLUGINS``: when set, every hook call is traced to stderr.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import logging
import os
import sys
import threading
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import pluggy

from . import _providers, hookspecs
from .errors import DiffluxError, LoadError, PluginConflictError, PluginError, UnknownClassError

__all__ = [
    "ENTRY_POINT_GROUP",
    "AttentionBackendSpec",
    "CheckReport",
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


def _checked_ref(plugin: str, kind: str, ref: Any, name: Any, *, classes_only: bool = True) -> str:
    """The registered name of ``ref``; a :class:`PluginError` naming ``plugin`` when the arguments are garbage."""
    where = f"plugin {plugin!r} called register() for a {kind}"
    if isinstance(ref, str):
        module, colon, attr = ref.partition(":")
        parts = (*module.split("."), *attr.split("."))
        if not colon or not module or not attr or not all(p.isidentifier() for p in parts):
            raise PluginError(f"{where}: the lazy reference {ref!r} must look like 'package.module:ClassName'")
    elif classes_only and not isinstance(ref, type):
        raise PluginError(
            f"{where} with {ref!r} ({type(ref).__name__}); pass the class or a lazy 'package.module:ClassName' string"
        )
    elif not classes_only and not callable(ref):
        raise PluginError(f"{where} with {ref!r} ({type(ref).__name__}); pass a function or a 'module:function' string")
    if name is None:
        return _ref_name(ref)
    if not isinstance(name, str) or not name.strip():
        raise PluginError(f"{where} with name={name!r}; a name must be a non-empty string")
    return name


def _names(plugin: str, what: str, value: Any) -> list[str]:
    """``value`` as a list of non-empty strings (a bare string is refused: it would be iterated letter by letter)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise PluginError(f"plugin {plugin!r} passed {what}={value!r}; pass a list of names")
    items = list(value)
    bad = [v for v in items if not isinstance(v, str) or not v.strip()]
    if bad:
        raise PluginError(f"plugin {plugin!r} passed {what} with {bad[0]!r}; every entry must be a non-empty string")
    return items


def config_keys(cls: Any) -> frozenset[str] | None:
    """The config keys a class accepts (its ``__init__`` keywords), or ``None`` when it takes any (``**kwargs``)."""
    try:
        signature = inspect.signature(inspect.unwrap(cls.__init__))
    except (TypeError, ValueError):
        return None
    params = list(signature.parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


_PLUGIN_ERROR_TYPES: dict[type[BaseException], type[PluginError]] = {}


def _plugin_error(exc: Exception, message: str) -> PluginError:
    """A :class:`PluginError` for ``exc`` that is also of ``exc``'s built-in type (``except KeyError`` still works)."""
    base = type(exc)
    if base.__module__ == "builtins" and base is not Exception:
        cls = _PLUGIN_ERROR_TYPES.get(base)
        if cls is None:
            try:
                cls = types.new_class(f"Plugin{base.__name__}", (PluginError, base), {})
                cls.__str__ = lambda self: str(self.args[0]) if self.args else ""  # type: ignore[method-assign]
                cls.__module__ = PluginError.__module__
            except TypeError:  # a layout that cannot be combined
                cls = PluginError
            _PLUGIN_ERROR_TYPES[base] = cls
        try:
            return cls(message)
        except TypeError:  # an exception type that needs more than a message (UnicodeDecodeError)
            pass
    return PluginError(message)


def _result_check(hook_name: str) -> tuple[Callable[[Any], bool], str] | None:
    """How to check what an implementation of a behaviour hook returns (``None``: not checked).

    Known hooks have an explicit rule; for other hooks the spec's return annotation is used when
    it is a plain class or a union of plain classes (generic arguments are not checked).
    """
    special = _RESULT_RULES.get(hook_name)
    if special is not None:
        return special
    spec = getattr(hookspecs, hook_name, None)
    if spec is None:
        return None
    try:
        hint = typing.get_type_hints(spec, globalns={**vars(typing), **vars(hookspecs), "Path": Path}).get("return")
    except Exception:  # an annotation we cannot evaluate: leave it unchecked
        return None
    if hint is None or hint is Any:
        return None
    parts = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    classes: list[type] = []
    for part in parts:
        origin = typing.get_origin(part) or part
        if part is type(None) or part is None:
            continue
        if not isinstance(origin, type) or origin is Any or getattr(origin, "_is_protocol", False):
            return None
        classes.append(origin)
    if not classes:
        return None
    wanted = tuple(classes)
    text = " or ".join(c.__name__ for c in wanted) + " or None"
    return (lambda value: isinstance(value, wanted)), text


def _is_pipeline_class(value: Any) -> bool:
    """A ``DiffusionPipeline`` subclass, or a pipeline class of another framework that says it is one
    (``__difflux_pipeline__ = True``: the Flax pipelines of ``difflux-flax`` do not subclass the torch base)."""
    return isinstance(value, type) and (
        any(c.__name__ == "DiffusionPipeline" and c.__module__ == "difflux.pipeline" for c in value.__mro__)
        or getattr(value, "__difflux_pipeline__", False) is True
    )


#: Return-value rules that the annotations alone do not state.
_RESULT_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "difflux_resolve_pretrained": (lambda v: isinstance(v, str | os.PathLike), "a folder path (str or os.PathLike)"),
    "difflux_load_pipeline_class": (_is_pipeline_class, "a DiffusionPipeline subclass"),
}

#: Exceptions a behaviour hook may raise on purpose; they reach the caller unchanged.
_PASS_THROUGH: tuple[type[BaseException], ...] = (DiffluxError, OSError)


def _guard(plugin: str, hook_name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap one behaviour-hook implementation: a crash or a wrong result becomes a PluginError naming both."""
    check = _result_check(hook_name)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())
            raise _plugin_error(exc, f"plugin {plugin!r} failed in {hook_name}: {type(exc).__name__}: {text}") from exc
        if result is not None and check is not None and not check[0](result):
            raise PluginError(
                f"plugin {plugin!r} returned {type(result).__qualname__} ({result!r:.80}) from {hook_name}; "
                f"it must return {check[1]}, or None to let another plugin answer"
            )
        return result

    guarded.__difflux_guarded__ = True  # type: ignore[attr-defined]
    return guarded


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
            except Exception as exc:  # any error while importing the plugin's module
                raise PluginError(
                    f"plugin {self.plugin!r} registered {self.kind} {self.name!r} as {self.ref!r}, "
                    f"which cannot be imported: {type(exc).__name__}: {exc}"
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
            try:
                found = importlib.util.find_spec(module)
            except ImportError:  # "a.b" whose parent package is missing
                found = None
            if found is None:
                return f"needs the module {module!r}, which is not installed"
        if self.probe is not None:
            try:  # a probe that crashes makes its backend unusable, not every attention call
                if isinstance(self.probe, str):
                    self.probe = import_ref(self.probe)
                why = self.probe()
            except Exception as exc:
                return f"its availability probe {self.probe!r} raised {type(exc).__name__}: {exc}"
            if why is not None and not isinstance(why, str):
                return f"its availability probe returned {why!r}, not a reason (str) or None"
            return why
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
class CheckReport:
    """What :meth:`Registry.check` found: how much it imported and validated, and every problem."""

    imported: int = 0
    aliases: int = 0
    unavailable: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)


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


class RegisterOffloadStrategy(Protocol):
    def __call__(self, name: str, ref: Any) -> None: ...


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


class Registry:
    """What every loaded plugin registered. Build it with :func:`get_registry`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("difflux")
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        #: entry-point name -> why it did not load
        self.skipped: dict[str, str] = {}
        #: entry-point name -> the distribution of a skipped plugin
        self.skipped_distributions: dict[str, str] = {}
        #: entry-point names left out by DIFFLUX_LOAD_PLUGINS / DIFFLUX_DISABLE_PLUGIN_AUTOLOAD (not failures)
        self.excluded: set[str] = set()
        self.pipelines: dict[str, Registration] = {}
        self.components: dict[tuple[str, str], Registration] = {}
        self.schedulers: dict[str, Registration] = {}
        self.scheduler_aliases: dict[str, SchedulerAlias] = {}
        self.attention_backends: dict[str, AttentionBackendSpec] = {}
        #: offload strategy name -> ``strategy(models, plan) -> Offloaded`` (see :mod:`difflux.offload`)
        self.offload_strategies: dict[str, Registration] = {}
        self._tracing = False
        self._aliases_checked: set[str] = set()

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
        raw_allow = os.environ.get("DIFFLUX_LOAD_PLUGINS", "")
        allow = {n.strip() for n in raw_allow.split(",") if n.strip()}
        autoload = not _env_flag("DIFFLUX_DISABLE_PLUGIN_AUTOLOAD")
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if (allow and ep.name not in allow) or (not allow and not autoload):
                why = (
                    f"not loaded: DIFFLUX_LOAD_PLUGINS={raw_allow.strip()!r} does not name it"
                    if allow
                    else "not loaded: DIFFLUX_DISABLE_PLUGIN_AUTOLOAD is set and DIFFLUX_LOAD_PLUGINS does not name it"
                )
                self.skipped[ep.name] = why
                self.skipped_distributions[ep.name] = dist
                self.excluded.add(ep.name)
                continue
            if ep.name in self.plugins:
                raise PluginConflictError(
                    f"two plugins use the entry-point name {ep.name!r}: {self.plugins[ep.name].distribution} and {dist}"
                )
            try:
                module = ep.load()
            except Exception as exc:  # ImportError, SyntaxError, RuntimeError ...: isolate this plugin
                text = " ".join(str(exc).split())
                self.skipped[ep.name] = f"failed to import: {type(exc).__name__}: {text}"
                self.skipped_distributions[ep.name] = dist
                logger.warning(
                    "difflux: skipping plugin %r (%s %s): failed to import %s: %s: %s",
                    ep.name,
                    dist,
                    version,
                    ep.value,
                    type(exc).__name__,
                    text,
                )
                continue
            self._add_plugin(ep.name, module, dist, version)
        for name, module in extra_plugins:
            self._add_plugin(name, module, getattr(module, "__name__", name), "")
        self.pm.check_pending()
        self._collect()
        self._guard_behaviour_hooks()

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
            ("difflux_register_offload_strategies", self._offload_registrar),
        ]
        for hook_name, make_register in calls:
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                if self._tracing:
                    sys.stderr.write(f"difflux trace: {hook_name} -> plugin {impl.plugin_name!r}\n")
                kwargs = {"register": make_register(impl.plugin_name)}
                try:
                    impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
                except PluginError as exc:
                    if f"{impl.plugin_name!r}" in str(exc):
                        raise
                    raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc}") from exc
                except Exception as exc:
                    raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {exc!r}") from exc

    def _guard_behaviour_hooks(self) -> None:
        """Wrap every behaviour-hook implementation so that a crash or a wrong result names plugin and hook.

        Wrapper implementations (``wrapper=True`` / ``hookwrapper=True``) are left as they are.
        """
        for hook_name in dir(self.pm.hook):
            if not hook_name.startswith("difflux_") or hook_name.startswith("difflux_register_"):
                continue
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.wrapper or impl.hookwrapper or getattr(impl.function, "__difflux_guarded__", False):
                    continue
                impl.function = _guard(impl.plugin_name, hook_name, impl.function)

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
            name = _checked_ref(plugin, "pipeline", ref, name)
            for key in (name, *_names(plugin, "aliases", aliases)):
                self._put(self.pipelines, key, Registration("pipeline", key, ref, plugin))

        return register

    def _component_registrar(self, plugin: str) -> RegisterComponent:
        def register(ref: Any, *, name: str | None = None, library: str = "diffusers") -> None:
            name = _checked_ref(plugin, "component", ref, name)
            if not isinstance(library, str) or not library.strip():
                raise PluginError(
                    f"plugin {plugin!r} registered the component {name!r} with library={library!r}; "
                    "it must be the first item of the model_index.json entry, such as 'diffusers'"
                )
            self._put(self.components, (library, name), Registration("component", name, ref, plugin))

        return register

    def _scheduler_registrar(self, plugin: str) -> RegisterScheduler:
        def register(
            ref: Any, *, name: str | None = None, aliases: Mapping[str, Mapping[str, Any]] | None = None
        ) -> None:
            name = _checked_ref(plugin, "scheduler", ref, name)
            if aliases is not None and not isinstance(aliases, Mapping):
                raise PluginError(
                    f"plugin {plugin!r} registered the scheduler {name!r} with aliases={aliases!r}; "
                    "aliases must map each alias to its config overrides, e.g. {'DPM++ 2M Karras': "
                    "{'use_karras_sigmas': True}}"
                )
            folded = name.casefold()
            for existing in self.scheduler_aliases.values():
                if existing.alias.casefold() == folded:
                    raise self._alias_clash(name, existing, plugin, "scheduler class")
            self._put(self.schedulers, name, Registration("scheduler", name, ref, plugin))
            for alias, overrides in (aliases or {}).items():
                self._add_alias(plugin, name, alias, overrides)
            if not isinstance(ref, str):
                self._check_aliases(name, ref)

        return register

    def _alias_clash(self, name: str, old: SchedulerAlias, plugin: str, what: str) -> PluginConflictError:
        first = f"{old.plugin!r} ({self.plugins[old.plugin].distribution})"
        second = f"{plugin!r} ({self.plugins[plugin].distribution})"
        return PluginConflictError(
            f"{what} {name!r} (plugin {second}) has the name of the scheduler alias {old.alias!r} -> "
            f"{old.scheduler} (plugin {first}); aliases match case-insensitively, so one of them must be renamed"
        )

    def _add_alias(self, plugin: str, scheduler: str, alias: Any, overrides: Any) -> None:
        where = f"plugin {plugin!r} registered the scheduler alias {alias!r} -> {scheduler}"
        if not isinstance(alias, str) or not alias.strip():
            raise PluginError(f"{where}; an alias must be a non-empty string")
        if not isinstance(overrides, Mapping) or not all(isinstance(k, str) for k in overrides):
            raise PluginError(f"{where} with overrides {overrides!r}; overrides must be a dict of config keys")
        folded = alias.casefold()
        for class_name, reg in self.schedulers.items():
            if class_name.casefold() == folded and not (class_name == scheduler and reg.plugin == plugin):
                owner = f"{reg.plugin!r} ({self.plugins[reg.plugin].distribution})"
                raise PluginConflictError(
                    f"scheduler alias {alias!r} -> {scheduler} (plugin {plugin!r} "
                    f"({self.plugins[plugin].distribution})) has the name of the scheduler class {class_name!r} "
                    f"(plugin {owner}); rename the alias"
                )
            if class_name.casefold() == folded:
                raise PluginError(f"{where}: an alias equal to its own class name is never reached; drop it")
        for old in self.scheduler_aliases.values():
            if old.alias.casefold() != folded:
                continue
            if old.plugin != plugin:
                raise self._alias_clash(alias, old, plugin, "scheduler alias")
            if old.alias != alias:
                raise PluginError(f"{where}, which differs from its alias {old.alias!r} only in case")
            del self.scheduler_aliases[old.alias]
            break
        self.scheduler_aliases[alias] = SchedulerAlias(alias, scheduler, dict(overrides), plugin)
        self._note(plugin, "scheduler alias", f"{alias} -> {scheduler}")

    def _check_aliases(self, scheduler: str, cls: Any) -> None:
        """Refuse aliases of ``scheduler`` whose overrides name config keys ``cls`` does not take."""
        if scheduler in self._aliases_checked:
            return
        keys = config_keys(cls)
        for alias in self.scheduler_aliases.values():
            if alias.scheduler != scheduler or keys is None:
                continue
            unknown = sorted(set(alias.overrides) - keys)
            if unknown:
                raise PluginError(
                    f"plugin {alias.plugin!r} registered the scheduler alias {alias.alias!r} -> {scheduler} with "
                    f"config overrides {', '.join(map(repr, unknown))} that {scheduler} does not take; "
                    f"it takes: {', '.join(sorted(keys))}"
                )
        self._aliases_checked.add(scheduler)

    def _backend_registrar(self, plugin: str) -> RegisterAttentionBackend:
        def register(name: str, ref: Any, **constraints: Any) -> None:
            if not isinstance(name, str) or not name.strip():
                raise PluginError(
                    f"plugin {plugin!r} registered an attention backend named {name!r}; "
                    "a name must be a non-empty string"
                )
            _checked_ref(plugin, "attention backend", ref, name, classes_only=False)
            old = self.attention_backends.get(name)
            if old is not None and old.plugin != plugin:
                raise self._clash("attention backend", name, old.plugin, plugin)
            spec = _backend_spec(plugin, name, ref, constraints)
            self.attention_backends[name] = spec
            self._note(plugin, "attention backend", name)

        return register

    def _offload_registrar(self, plugin: str) -> RegisterOffloadStrategy:
        def register(name: str, ref: Any) -> None:
            if not isinstance(name, str) or not name.strip():
                raise PluginError(
                    f"plugin {plugin!r} registered an offload strategy named {name!r}; "
                    "a name must be a non-empty string"
                )
            if not (callable(ref) or (isinstance(ref, str) and ":" in ref)):
                raise PluginError(
                    f"plugin {plugin!r} registered offload strategy {name!r} as {ref!r}; "
                    "pass a callable or a lazy 'package.module:function' string"
                )
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

    # -- look-ups ------------------------------------------------------------------------

    def pipeline_class(self, name: str, where: str = "") -> Any:
        reg = self.pipelines.get(name)
        if reg is None:
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
        cls = reg.load()
        self._check_aliases(name, cls)
        return cls

    def resolve_scheduler(self, name_or_alias: str) -> tuple[Any, dict[str, Any]]:
        """A scheduler class and config overrides for a class name or a sampler alias."""
        if name_or_alias in self.schedulers:
            return self.scheduler_class(name_or_alias), {}
        folded = {a.casefold(): a for a in self.scheduler_aliases}
        alias = self.scheduler_aliases.get(folded.get(name_or_alias.casefold(), ""))
        if alias is None:
            raise self.unknown("scheduler", name_or_alias)
        return self.scheduler_class(alias.scheduler), dict(alias.overrides)

    def resolve_pretrained(self, name_or_path: str | os.PathLike[str], options: Any) -> Path:
        """A local folder for a repo id or path, through the ``difflux_resolve_pretrained`` hook."""
        folder = self.pm.hook.difflux_resolve_pretrained(name_or_path=str(name_or_path), options=options)
        if folder is None:
            hint = (
                ""
                if "difflux-hub" in {p.distribution for p in self.plugins.values()}
                else ("; to download repo ids from the Hub, pip install difflux-hub")
            )
            raise LoadError(f"{name_or_path!r} is not an existing local folder{hint}")
        return Path(folder)

    def component_loaded(self, name: str, component: Any, options: Any) -> Any:
        """Pass a freshly loaded component through ``difflux_component_loaded``; the replacement, or ``component``.

        :param name: the component's name in its pipeline, ``""`` for a model or scheduler loaded on its own.
        """
        for replacement in self.pm.hook.difflux_component_loaded(name=name, component=component, options=options):
            return replacement
        return component

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

    def unknown(
        self, kind: str, name: str, library: str = "diffusers", where: str = "", distribution: str | None = None
    ) -> UnknownClassError:
        """The error for a class that no loaded plugin provides, saying what to do.

        :param distribution: the distribution known to provide it (a folder's ``_difflux_plugins``
            record); else core's table of first-party classes is asked.

        A distribution that is installed but whose plugin was left out by ``DIFFLUX_LOAD_PLUGINS``
        (or failed to import) is named as such, not as something to ``pip install``.
        """
        place = f" ({where})" if where else ""
        dist = distribution or ("difflux-transformers" if library == "transformers" else _providers.PROVIDERS.get(name))
        skipped = [n for n, d in sorted(self.skipped_distributions.items()) if dist is not None and d == dist]
        loaded = {p.distribution: p for p in self.plugins.values()}
        if skipped:
            ep = skipped[0]
            if ep in self.excluded:
                hint = (
                    f"it is provided by {dist!r}, which is installed, but its plugin {ep!r} is excluded "
                    f"({self.skipped[ep].removeprefix('not loaded: ')}); add {ep!r} to DIFFLUX_LOAD_PLUGINS"
                )
            else:
                hint = (
                    f"it is provided by {dist!r}, which is installed, but its plugin {ep!r} "
                    f"{self.skipped[ep]}; fix or reinstall {dist}"
                )
        elif dist is not None and dist in loaded:
            hint = (
                f"the installed {dist} {loaded[dist].version} does not register it; "
                f"a newer version may: pip install -U {dist}"
            )
        elif distribution:
            hint = (
                f"the folder was saved with it from the distribution {distribution!r}: "
                f"{_providers.install_hint(distribution)}"
            )
        elif dist is not None:
            hint = f"it is provided by the distribution {dist!r}: {_providers.install_hint(dist)}"
        else:
            hint = "install the plugin distribution that provides it; `difflux plugins` lists what is installed"
            if self.excluded:
                hint += f" (not loaded because of DIFFLUX_LOAD_PLUGINS: {', '.join(sorted(self.excluded))})"
        return UnknownClassError(f"no installed difflux plugin provides the {kind} {library}.{name}{place}; {hint}")

    # -- checking everything -----------------------------------------------------------------

    def check(self) -> CheckReport:
        """Import every lazy reference and validate every alias (``difflux plugins --check``).

        Backends whose ``requires`` modules are missing are listed as unavailable, not as problems.
        """
        report = CheckReport()
        tables: list[tuple[str, Iterable[Registration], Callable[[Any], str | None]]] = [
            ("pipeline", self.pipelines.values(), _pipeline_problem),
            ("component", self.components.values(), _component_problem),
            ("scheduler", self.schedulers.values(), _scheduler_problem),
        ]
        for kind, regs, problem in tables:
            for reg in regs:
                try:
                    obj = reg.load()
                except PluginError as exc:
                    report.problems.append(str(exc))
                    continue
                report.imported += 1
                why = problem(obj)
                if why is not None:
                    report.problems.append(f"plugin {reg.plugin!r} registered {kind} {reg.name!r} as {obj!r}, {why}")
        for alias in self.scheduler_aliases.values():
            target = self.schedulers.get(alias.scheduler)
            if target is None:
                report.problems.append(
                    f"plugin {alias.plugin!r}: scheduler alias {alias.alias!r} names {alias.scheduler}, "
                    "which no plugin registers"
                )
                continue
            try:
                self._aliases_checked.discard(alias.scheduler)
                self.scheduler_class(alias.scheduler)
            except PluginError as exc:
                if str(exc) not in report.problems:
                    report.problems.append(str(exc))
                continue
            report.aliases += 1
        for spec in self.attention_backends.values():
            why = spec.available()
            if why is not None:
                report.unavailable.append(f"attention backend {spec.name!r} (plugin {spec.plugin!r}): {why}")
                continue
            try:
                fn = spec.load()
            except Exception as exc:
                report.problems.append(
                    f"plugin {spec.plugin!r} registered attention backend {spec.name!r} as {spec.ref!r}, "
                    f"which cannot be imported: {type(exc).__name__}: {exc}"
                )
                continue
            report.imported += 1
            if not callable(fn):
                report.problems.append(
                    f"plugin {spec.plugin!r} registered attention backend {spec.name!r} as {fn!r}, "
                    "which is not callable"
                )
        return report


def _pipeline_problem(obj: Any) -> str | None:
    return None if _is_pipeline_class(obj) else "which is not a DiffusionPipeline subclass"


def _component_problem(obj: Any) -> str | None:
    if not isinstance(obj, type):
        return "which is not a class"
    return None if callable(getattr(obj, "from_pretrained", None)) else "which has no from_pretrained"


def _scheduler_problem(obj: Any) -> str | None:
    if not isinstance(obj, type):
        return "which is not a class"
    return None if callable(getattr(obj, "from_config", None)) else "which has no from_config"


_BACKEND_FLAGS = ("supports_mask", "supports_causal")


def _backend_spec(plugin: str, name: str, ref: Any, constraints: dict[str, Any]) -> AttentionBackendSpec:
    """Validate ``register(name, ref, **constraints)`` of an attention backend; errors name the plugin."""
    where = f"plugin {plugin!r} registered attention backend {name!r}"
    fields = {f.name for f in dataclasses.fields(AttentionBackendSpec)} - {"name", "ref", "plugin"}
    unknown = sorted(set(constraints) - fields)
    if unknown:
        raise PluginError(f"{where} with unknown constraints {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    out = dict(constraints)
    priority = out.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise PluginError(f"{where} with priority={priority!r}; it must be an int")
    for key in ("devices", "dtypes"):
        value = out.get(key)
        if value is None:
            continue
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise PluginError(f"{where} with {key}={value!r}; pass a set of names, such as {{'cuda'}}")
        out[key] = frozenset(str(x).removeprefix("torch.") for x in value)
    for key in _BACKEND_FLAGS:
        if key in out and not isinstance(out[key], bool):
            raise PluginError(f"{where} with {key}={out[key]!r}; it must be True or False")
    head = out.get("max_head_dim")
    if head is not None and (isinstance(head, bool) or not isinstance(head, int) or head < 1):
        raise PluginError(f"{where} with max_head_dim={head!r}; it must be a positive int or None")
    if "requires" in out:
        out["requires"] = tuple(_names(plugin, "requires", out["requires"]))
    for key in ("probe", "accepts"):
        value = out.get(key)
        if value is not None and not callable(value) and not (isinstance(value, str) and ":" in value):
            raise PluginError(f"{where} with {key}={value!r}; pass a function or a lazy 'module:function' string")
    return AttentionBackendSpec(name=name, ref=ref, plugin=plugin, **out)


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
