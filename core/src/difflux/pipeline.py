"""``DiffusionPipeline``: a set of components saved as a folder with ``model_index.json``."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, overload

import numpy as np
import torch

from . import _providers
from ._files import check_regular_file, max_json_bytes
from ._pushing import PushToHubMixin
from .config import DIFFUSERS_FORMAT_VERSION, ConfigMixin, FrozenConfig, read_json, write_json_atomic
from .errors import ConfigError, LoadError, UnknownClassError, add_context
from .image import numpy_to_pil
from .options import LoadOptions, check_bool, require_trust
from .outputs import BaseOutput
from .registry import CORE_PLUGIN, Registration, Registry, get_registry

if TYPE_CHECKING:
    import PIL.Image
    from tqdm.auto import tqdm as Tqdm

__all__ = ["PLUGINS_KEY", "DiffusionPipeline", "ImagePipelineOutput"]

logger = logging.getLogger("difflux")

#: Private ``model_index.json`` key: ``{ClassName: distribution}`` for classes that third-party
#: plugins provide, so that loading the folder without the plugin names what to install.
#: Diffusers ignores keys that start with ``_`` when it loads a pipeline.
PLUGINS_KEY = "_difflux_plugins"

_FORMAT_KEYS = frozenset({"_class_name", "_diffusers_version"})
_Entry = tuple[str | None, str | None]


@dataclasses.dataclass
class ImagePipelineOutput(BaseOutput):
    """What image pipelines return: PIL images, an ``NHWC`` array, or an ``NCHW`` tensor."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


# -- helpers -----------------------------------------------------------------------------------


def _without_autograd(call: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a pipeline ``__call__`` so it runs under ``torch.no_grad()`` and, when the outermost
    call ends, hands offloaded models back (:meth:`DiffusionPipeline.maybe_free_model_hooks`)."""

    @functools.wraps(call)
    def __call__(self: DiffusionPipeline, *args: Any, **kwargs: Any) -> Any:
        _check_prompt_embeds(type(self).__name__, kwargs)
        depth = self.__dict__.get("_difflux_call_depth", 0)
        self.__dict__["_difflux_call_depth"] = depth + 1
        try:
            with torch.no_grad():
                return call(self, *args, **kwargs)
        finally:
            self.__dict__["_difflux_call_depth"] = depth
            if depth == 0:
                self.maybe_free_model_hooks()

    __call__._difflux_no_grad = True  # type: ignore[attr-defined]
    return __call__


def _check_prompt_embeds(pipeline: str, kwargs: dict[str, Any]) -> None:
    """Every ``*prompt_embeds`` keyword (``prompt_embeds``, ``negative_pooled_prompt_embeds`` ...) of a
    pipeline call is ``None`` or a tensor, checked before the pipeline's own code reads its shape.

    :raises TypeError: naming the argument and the type it got.
    """
    for key, value in kwargs.items():
        if key.endswith("prompt_embeds") and value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{pipeline}: {key} must be a torch.Tensor (from encode_prompt), got {type(value).__name__}"
            )


def _dtype_alias(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """``dtype=`` (Diffusers' newer name) as ``torch_dtype=``; both at once must agree."""
    if "dtype" not in kwargs:
        return kwargs
    kwargs = dict(kwargs)
    dtype = kwargs.pop("dtype")
    if "torch_dtype" in kwargs and kwargs["torch_dtype"] != dtype:
        raise TypeError(
            f"{where}.from_pretrained got dtype={dtype!r} and torch_dtype={kwargs['torch_dtype']!r}; "
            "they are the same option, pass one of them"
        )
    kwargs["torch_dtype"] = dtype
    return kwargs


def _is_entry(value: Any) -> bool:
    """Whether ``value`` looks like a ``[library, ClassName]`` component entry."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(v is None or isinstance(v, str) for v in value)
    )


def _check_component_name(name: str, index_file: Path) -> None:
    """Refuse entry names that would read or write outside the pipeline folder."""
    plain = (
        name not in ("", ".", "..")
        and "\x00" not in name
        and PurePosixPath(name).name == name
        and PureWindowsPath(name).name == name
        and not Path(name).is_absolute()
    )
    if not plain:
        raise ConfigError(
            f"{index_file}: component entry {name!r} is not a plain folder name; component names "
            f"must not contain path separators, drive letters or be '.'/'..' "
            f"(refusing to read or write outside {index_file.parent})"
        )


def _refers_to(reg: Registration, cls: type) -> bool:
    return reg.ref is cls or reg.ref == f"{cls.__module__}:{cls.__qualname__}"


def _registered_name(table: Iterable[tuple[Any, Registration]], cls: type) -> tuple[Any, Registration] | None:
    """The registry key of ``cls``, preferring the one named like the class."""
    found = [(key, reg) for key, reg in table if _refers_to(reg, cls)]
    for key, reg in found:
        if reg.name == cls.__name__:
            return key, reg
    return found[0] if found else None


def _distribution(registry: Registry, reg: Registration) -> str | None:
    """The distribution a third-party plugin comes from (``None`` for core)."""
    info = registry.plugins.get(reg.plugin)
    if info is None or reg.plugin == CORE_PLUGIN or info.distribution in ("", "?", "difflux"):
        return None
    return info.distribution


def _describe_component(registry: Registry, component: Any) -> tuple[_Entry, str | None]:
    """``([library, ClassName], distribution)`` as ``model_index.json`` records ``component``.

    A registered class is written under the key it was registered with (so difflux classes that
    mirror Diffusers classes are written as ``"diffusers"``); any other class, e.g. a
    ``transformers`` model or tokenizer, under its top-level package name, as Diffusers does.
    """
    if component is None:
        return (None, None), None
    cls = type(component)
    hit = _registered_name(registry.components.items(), cls)
    if hit is not None:
        (library, name), reg = hit
        return (library, name), _distribution(registry, reg)
    hit = _registered_name(registry.schedulers.items(), cls)
    if hit is not None:
        name, reg = hit
        return ("diffusers", name), _distribution(registry, reg)
    return (cls.__module__.split(".")[0], cls.__name__), None


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (anything not checkable at runtime fits)."""
    if hint is Any or isinstance(hint, (str, typing.TypeVar)):
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Annotated:
        return _matches(value, typing.get_args(hint)[0])
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin is not None:
        hint = origin
    if isinstance(hint, type):
        try:
            return isinstance(value, hint)
        except TypeError:  # a Protocol that is not runtime-checkable
            return True
    return True


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__ if hint.__module__ == "builtins" else f"{hint.__module__}.{hint.__qualname__}"
    return str(hint).replace("typing.", "")


def _plugins_hint(index: Mapping[str, Any]) -> dict[str, str]:
    value = index.get(PLUGINS_KEY)
    if not isinstance(value, Mapping):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _unknown(
    registry: Registry, kind: str, library: str, name: str, where: str, hint: Mapping[str, str]
) -> UnknownClassError:
    """The unknown-class error, naming the distribution the folder was saved with when known."""
    dist = hint.get(name)
    if dist and name not in _providers.PROVIDERS and library != "transformers":
        return registry.unknown(kind, name, library=library, where=where, distribution=dist)
    return registry.unknown(kind, name, library=library, where=where)


def _module_dtype(module: torch.nn.Module) -> torch.dtype | None:
    declared = getattr(module, "dtype", None)  # ModelMixin and transformers models say which
    if isinstance(declared, torch.dtype):
        return declared
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _module_device(module: torch.nn.Module) -> torch.device | None:
    declared = getattr(module, "device", None)
    if isinstance(declared, torch.device):
        return declared
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return None


def _options_for(options: LoadOptions, name: str) -> LoadOptions:
    """``options`` with a per-component ``torch_dtype`` mapping resolved for ``name``."""
    value = options.torch_dtype
    if isinstance(value, Mapping):
        value = value.get(name, value.get("default"))
    return options.replace(torch_dtype=value, subfolder=None)


def _load_registered(klass: Any, name: str, path: Path, options: LoadOptions) -> tuple[Any, Any]:
    """Load a registered component class from its folder: ``(component, loading info or None)``."""
    from .modeling import ModelMixin
    from .schedulers import SchedulerMixin

    if isinstance(klass, type) and issubclass(klass, ModelMixin):
        loaded: Any = klass._from_folder(path, options, component=name)
        return loaded if options.output_loading_info else (loaded, None)
    if isinstance(klass, type) and issubclass(klass, SchedulerMixin):
        return klass._from_folder(path), None  # not from_pretrained: the caller runs component_loaded
    component_options = _options_for(options, name)
    kwargs: dict[str, Any] = {}
    for field in ("torch_dtype", "variant", "use_safetensors", "device_map"):
        if getattr(component_options, field) is not None:
            kwargs[field] = getattr(component_options, field)
    return klass.from_pretrained(path, **kwargs), None


def _save_component(component: Any, name: str, path: Path, options: Mapping[str, Any]) -> None:
    """Save one component into ``path``, passing only the save options its method accepts."""
    save = getattr(component, "save_pretrained", None)
    if not callable(save):
        raise TypeError(
            f"component {name!r} ({type(component).__qualname__}) has no save_pretrained method, "
            "so the pipeline cannot be saved; set it to None or give it a save_pretrained(folder)"
        )
    params = inspect.signature(save).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    save(path, **{k: v for k, v in options.items() if v is not None and (takes_any or k in params)})


# -- the pipeline ------------------------------------------------------------------------------


class DiffusionPipeline(ConfigMixin, PushToHubMixin):
    """A runnable set of components, saved as a folder with ``model_index.json``.

    A subclass declares its components as ``__init__`` parameters and registers them::

        class MyPipeline(DiffusionPipeline):
            _optional_components = ("safety_checker",)

            def __init__(self, unet: UNet2DModel, scheduler: SchedulerMixin,
                         safety_checker: Checker | None = None,
                         requires_safety_checker: bool = True) -> None:
                super().__init__()
                self.register_modules(unet=unet, scheduler=scheduler, safety_checker=safety_checker)

    **Components and config values**, as Diffusers tells them apart: an ``__init__`` parameter
    is a *component* when it has no default or is named in ``_optional_components``; every other
    parameter (one with a default, like ``requires_safety_checker``) is a *config value*. Config
    values are recorded automatically and written into ``model_index.json`` next to the
    component entries (``"unet": ["diffusers", "UNet2DModel"]``); ``from_pretrained`` passes them
    back to ``__init__``. Components are saved into subfolders named after them.

    A subclass's ``__call__`` runs under ``torch.no_grad()`` without further ado.
    """

    config_name: ClassVar[str] = "model_index.json"
    #: Components that may be ``None`` or absent from ``model_index.json``.
    _optional_components: ClassVar[tuple[str, ...]] = ()
    #: The order the model components run in (``"text_encoder->unet->vae"``), for model offload.
    model_cpu_offload_seq: ClassVar[str | None] = None
    #: Components that offload keeps whole on the execution device (``("safety_checker",)``).
    _exclude_from_cpu_offload: ClassVar[tuple[str, ...]] = ()

    _component_names: list[str]
    _progress_bar_config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        call = cls.__dict__.get("__call__")
        if call is not None and not getattr(call, "_difflux_no_grad", False):
            cls.__call__ = _without_autograd(call)  # type: ignore[method-assign]
        super().__init_subclass__(**kwargs)

    def __init__(self) -> None:
        self.__dict__.setdefault("_internal_config", FrozenConfig())
        self.__dict__.setdefault("_component_names", [])
        self.__dict__.setdefault("_progress_bar_config", {})

    # -- what the class declares ---------------------------------------------------------------

    @classmethod
    def _split_signature(cls) -> tuple[tuple[str, ...], tuple[str, ...]]:
        components: list[str] = []
        values: list[str] = []
        for p in list(cls._init_signature().parameters.values())[1:]:
            if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                continue
            if p.default is p.empty or p.name in cls._optional_components:
                components.append(p.name)
            else:
                values.append(p.name)
        return tuple(components), tuple(values)

    @classmethod
    def _record_init(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], FrozenConfig]:
        """A pipeline's config is its config values, validated against their annotations and ranges
        like any config (``requires_safety_checker="maybe"`` is a ``ConfigError``); its components
        are not recorded (overrides are type-checked by ``from_pretrained``)."""
        try:
            bound = cls._init_signature().bind(None, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}(): {exc}") from None
        bound.apply_defaults()
        arguments = dict(list(bound.arguments.items())[1:])
        names = cls.config_value_names()
        values = {k: v for k, v in arguments.items() if k in names}
        if values:
            values = cls._validated_values(values)
            arguments.update(values)
        return arguments, FrozenConfig(values)

    @classmethod
    def component_names(cls) -> tuple[str, ...]:
        """The components ``__init__`` takes, in signature order."""
        return cls._split_signature()[0]

    @classmethod
    def config_value_names(cls) -> tuple[str, ...]:
        """The ``__init__`` parameters that are config values written into ``model_index.json``."""
        return cls._split_signature()[1]

    @classmethod
    def _component_annotations(cls) -> dict[str, Any]:
        try:
            return typing.get_type_hints(inspect.unwrap(cls.__init__))
        except Exception:  # unresolvable forward references: leave those components unchecked
            return {}

    @classmethod
    def _check_override(cls, name: str, value: Any) -> None:
        if value is None:
            if name in cls._optional_components:
                return
            optional = ", ".join(cls._optional_components) or "none"
            raise TypeError(
                f"{cls.__name__}.from_pretrained: {name}=None, but {name!r} is not an optional component "
                f"(optional components: {optional})"
            )
        hint = cls._component_annotations().get(name)
        if hint is not None and not _matches(value, hint):
            given = type(value)
            raise TypeError(
                f"{cls.__name__}.from_pretrained: component {name!r} must be {_type_name(hint)}, "
                f"got {given.__module__}.{given.__qualname__}"
            )

    # -- components ---------------------------------------------------------------------------

    def register_modules(self, **modules: Any) -> None:
        """Attach components (``None`` allowed); they make up :attr:`components` and are saved."""
        names = self.__dict__.setdefault("_component_names", [])
        for name, module in modules.items():
            if name not in names:
                names.append(name)
            setattr(self, name, module)

    @property
    def components(self) -> dict[str, Any]:
        """Every component by name, ``None`` ones included: ``OtherPipeline(**pipe.components)``."""
        return {name: getattr(self, name) for name in self.__dict__.get("_component_names", [])}

    @property
    def config(self) -> FrozenConfig:
        """Config values and component entries (``("diffusers", "UNet2DModel")``), read-only."""
        registry = get_registry()
        data = dict(self.__dict__.get("_internal_config", {}))
        for name, component in self.components.items():
            data[name] = _describe_component(registry, component)[0]
        return FrozenConfig(data)

    @property
    def name_or_path(self) -> str | None:
        """What ``from_pretrained`` was given, if the pipeline was loaded."""
        value = self.__dict__.get("_internal_config", {}).get("_name_or_path")
        return value if isinstance(value, str) else None

    def _torch_modules(self) -> list[tuple[str, torch.nn.Module]]:
        return [(n, c) for n, c in self.components.items() if isinstance(c, torch.nn.Module)]

    # -- loading ------------------------------------------------------------------------------

    @overload
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        output_loading_info: Literal[False] = False,
        **kwargs: Any,
    ) -> Self: ...

    @overload
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        output_loading_info: Literal[True],
        **kwargs: Any,
    ) -> tuple[Self, dict[str, Any]]: ...

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike[str], **kwargs: Any
    ) -> Self | tuple[Self, dict[str, Any]]:
        """Load a pipeline folder (or repo id, with ``difflux-hub``) written by difflux or Diffusers.

        Keyword arguments are either load options (:class:`difflux.LoadOptions`: ``torch_dtype``
        (or its alias ``dtype``) as one dtype or ``{"unet": torch.float16, "default": torch.float32}``, ``variant``,
        ``device_map`` ...), components that replace the saved ones (``scheduler=...``; checked
        against the ``__init__`` annotation), or config values (``requires_safety_checker=False``).

        Called on ``DiffusionPipeline``, the class comes from ``_class_name`` through the plugin
        registry; called on a subclass, that subclass is used. Each loaded component goes through
        the ``difflux_component_loaded`` hook. With ``output_loading_info=True`` the result is
        ``(pipeline, {component: loading info})``.
        """
        options, rest = LoadOptions.split(_dtype_alias(kwargs, cls.__name__))
        registry = get_registry()
        folder = registry.resolve_pretrained(pretrained_model_name_or_path, options)
        index_file = folder / cls.config_name
        if not os.path.lexists(index_file):
            raise LoadError(
                f"{folder}: no {cls.config_name} in this folder, so it is not a pipeline folder; "
                "to load a single model or scheduler, call its class's from_pretrained"
            )
        index = read_json(index_file, cls.config_name)
        hint = _plugins_hint(index)
        for key, value in index.items():
            if not key.startswith("_") and _is_entry(value):
                _check_component_name(key, index_file)

        pipeline_class = cls._custom_class(folder, index, options, registry) or cls._class_for(
            index, index_file, registry, hint
        )
        component_names, value_names = pipeline_class._split_signature()

        unexpected = sorted(set(rest) - set(component_names) - set(value_names))
        if unexpected:
            raise TypeError(
                f"{pipeline_class.__name__}.from_pretrained got unexpected keyword arguments "
                f"{', '.join(unexpected)}; components: {', '.join(component_names) or 'none'}; "
                f"config values: {', '.join(value_names) or 'none'}; "
                f"load options: {', '.join(sorted(LoadOptions.field_names()))}"
            )
        for name in component_names:
            if name in rest:
                pipeline_class._check_override(name, rest[name])

        from . import device_map

        plan = device_map.plan_pipeline(folder, index, [n for n in component_names if n not in rest], registry, options)
        loaded: dict[str, Any] = {}
        infos: dict[str, Any] = {}
        for name in component_names:
            if name in rest:
                loaded[name] = rest[name]
                continue
            if name not in index:
                if name in pipeline_class._optional_components:
                    loaded[name] = None
                    continue
                raise LoadError(
                    f"{index_file}: no entry for the component {name!r} that {pipeline_class.__name__} needs; "
                    f"add it to {cls.config_name} or pass {name}=... to from_pretrained"
                )
            value = index[name]
            if value is None:
                value = [None, None]
            if not _is_entry(value):
                raise ConfigError(
                    f"{index_file}: entry {name!r} must be [library, ClassName] or [null, null], found {value!r}"
                )
            library, class_name = value
            if library is None and class_name is None and name in pipeline_class._optional_components:
                loaded[name] = None
                continue
            if library is None or class_name is None:
                optional = ", ".join(pipeline_class._optional_components) or "none"
                raise ConfigError(
                    f"{index_file}: entry {name!r} is {value!r}, but {pipeline_class.__name__} needs the "
                    f"component {name!r} (only optional components may be [null, null]; optional: "
                    f"{optional}); write [library, ClassName] there or pass {name}=... to from_pretrained"
                )
            try:
                component, info = cls._load_component(
                    registry, name, library, class_name, folder, device_map.options_for(options, plan, name), hint
                )
            except (LoadError, ConfigError) as exc:  # UnknownClassError names the entry already
                add_context(exc, f"component {name!r} ({library}.{class_name})")
                raise
            for replacement in registry.hook.difflux_component_loaded(name=name, component=component, options=options):
                component = replacement
                break
            loaded[name] = component
            infos[name] = info

        values = {k: index[k] for k in value_names if k in index}
        values.update({k: v for k, v in rest.items() if k in value_names})
        try:
            pipe = pipeline_class(**loaded, **values)
        except ConfigError as exc:  # a config value of model_index.json (or its override) is invalid
            if str(exc).startswith("invalid config"):
                add_context(exc, str(index_file))
            raise
        device_map.finish_pipeline(pipe, plan)

        known = set(component_names) | set(value_names)
        dropped = sorted(k for k, v in index.items() if not k.startswith("_") and k not in known and _is_entry(v))
        if dropped:
            logger.warning(
                "%s: %s does not take the components %s; they are not loaded",
                index_file,
                pipeline_class.__name__,
                ", ".join(dropped),
            )
        extras = {k: v for k, v in index.items() if not k.startswith("_") and k not in known and not _is_entry(v)}
        pipe.register_to_config(**extras, _name_or_path=str(pretrained_model_name_or_path))
        if extras:
            logger.warning(
                "%s: %s does not take the config values %s; they are kept in .config and written back on save",
                index_file,
                pipeline_class.__name__,
                ", ".join(sorted(extras)),
            )
        return (pipe, infos) if options.output_loading_info else pipe

    @classmethod
    def _class_for(
        cls, index: Mapping[str, Any], index_file: Path, registry: Registry, hint: Mapping[str, str]
    ) -> type[Self]:
        if cls is not DiffusionPipeline:
            return cls
        name = index.get("_class_name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{index_file}: '_class_name' must name the pipeline class, found {name!r}")
        if name not in registry.pipelines:
            raise _unknown(registry, "pipeline", "diffusers", name, str(index_file), hint)
        pipeline_class = registry.pipeline_class(name, where=str(index_file))
        if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, DiffusionPipeline)):
            raise ConfigError(f"{index_file}: {name!r} is registered as {pipeline_class!r}, not a DiffusionPipeline")
        return typing.cast(type[Self], pipeline_class)

    @staticmethod
    def _load_component(
        registry: Registry,
        name: str,
        library: str,
        class_name: str,
        folder: Path,
        options: LoadOptions,
        hint: Mapping[str, str],
    ) -> tuple[Any, Any]:
        path = folder / name
        _check_json_files(path)
        options = _component_variant(path, name, options)
        klass = registry.component_class(library, class_name)
        if klass is not None:
            return _load_registered(klass, name, path, options)
        component = registry.hook.difflux_load_component(
            library=library, class_name=class_name, folder=path, options=_options_for(options, name)
        )
        if component is not None:
            return component, None
        where = f"component {name!r} in {folder / 'model_index.json'}"
        raise _unknown(registry, "component", library, class_name, where, hint)

    # -- saving -------------------------------------------------------------------------------

    def config_for_save(self) -> dict[str, Any]:
        """The ``model_index.json`` contents, exactly as Diffusers writes them.

        Components from third-party plugins are also recorded under the private key
        ``_difflux_plugins`` (``{ClassName: distribution}``), which Diffusers ignores.
        """
        registry = get_registry()
        data = {k: v for k, v in self.__dict__.get("_internal_config", {}).items() if not k.startswith("_")}
        plugins: dict[str, str] = {}
        for name, component in self.components.items():
            entry, dist = _describe_component(registry, component)
            data[name] = list(entry)
            if dist is not None and entry[1] is not None:
                plugins[entry[1]] = dist
        hit = _registered_name(registry.pipelines.items(), type(self))
        data["_class_name"] = hit[0] if hit is not None else type(self).__name__
        if hit is not None and (dist := _distribution(registry, hit[1])) is not None:
            plugins[data["_class_name"]] = dist
        data["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        if plugins:
            data[PLUGINS_KEY] = plugins
        return data

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        *,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
    ) -> Path:
        """Write ``model_index.json`` and every component into its subfolder, all at once.

        The folder is replaced only when everything is written; an error leaves it as it was.
        """
        from .serialization import atomic_folder

        check_bool("safe_serialization", safe_serialization, where=f"{type(self).__name__}.save_pretrained")
        target = Path(save_directory)
        index_file = target / self.config_name
        index = self.config_for_save()
        for name in self.components:
            _check_component_name(name, index_file)
        save_options = {"safe_serialization": safe_serialization, "variant": variant, "max_shard_size": max_shard_size}
        gone = {n for n, c in self.components.items() if c is None}

        def discard(path: PurePosixPath) -> bool:
            return path.parts[0] in gone

        with atomic_folder(target, discard=discard) as tmp:
            for name, component in self.components.items():
                if component is not None:
                    _save_component(component, name, tmp / name, save_options)
            write_json_atomic(tmp / self.config_name, index)
        return target

    # -- devices and dtypes -------------------------------------------------------------------

    def to(
        self,
        *args: str | torch.device | torch.dtype,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        silence_dtype_warnings: bool = False,
    ) -> Self:
        """Move every torch module component: ``to("cuda")``, ``to(torch.float16)``, ``to("cuda", torch.float16)``.

        Moving a float16 pipeline to the CPU warns (slow, and some kernels are missing there)
        unless ``silence_dtype_warnings=True``.
        """
        for arg in args:
            if isinstance(arg, torch.dtype):
                if dtype is not None:
                    raise TypeError(f"to() got two dtypes: {dtype} and {arg}")
                dtype = arg
            elif isinstance(arg, (str, torch.device)):
                if device is not None:
                    raise TypeError(f"to() got two devices: {device} and {arg}")
                device = arg
            else:
                raise TypeError(f"to() takes devices and dtypes, got {type(arg).__name__}: {arg!r}")
        reapply = self._offload_before_move(device, dtype)
        move: dict[str, Any] = {}
        if device is not None:
            move["device"] = torch.device(device)
        if dtype is not None:
            move["dtype"] = dtype
        modules = self._torch_modules()
        for _, module in modules:
            module.to(**move)
        if device is not None and torch.device(device).type == "cpu" and not silence_dtype_warnings:
            half = [n for n, m in modules if _module_dtype(m) == torch.float16]
            if half:
                warnings.warn(
                    f"{type(self).__name__}: components {', '.join(half)} are float16 on the CPU, where "
                    "float16 is slow and some operations are missing; use torch.float32 (or bfloat16) on "
                    "the CPU, or pass silence_dtype_warnings=True",
                    UserWarning,
                    stacklevel=2,
                )
        if reapply is not None:
            self.enable_offload(reapply.strategy, device=reapply.device, **reapply.options)
        return self

    def _offload_before_move(self, device: str | torch.device | None, dtype: torch.dtype | None) -> Any:
        """Offload and device maps against ``to()``: refuse a move to an accelerator, remove the hooks
        on a move to the CPU, and for a dtype-only cast return the offload to enable again after it."""
        from . import device_map, offload

        if device is not None and getattr(self, "hf_device_map", None):
            device_map.refuse_move(self, torch.device(device))
        if offload.active(self) is None:
            return None
        if device is not None and torch.device(device).type != "cpu":
            offload.refuse_move(self, torch.device(device))
        removed = offload.remove(self)
        return removed if device is None and dtype is not None else None

    @property
    def device(self) -> torch.device:
        """The device the pipeline runs on: the execution device while offload is enabled, the main
        device of a ``device_map``, else the device of the first torch module component (CPU when
        there is none)."""
        return self._execution_device

    @property
    def _execution_device(self) -> torch.device:
        from . import device_map, offload

        state = offload.active(self)
        if state is not None:
            return state.device
        placed = device_map.main_device(self)
        if placed is not None:
            return placed
        for _, module in self._torch_modules():
            found = _module_device(module)
            if found is not None:
                return found
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the first torch module component (float32 when there is none)."""
        for _, module in self._torch_modules():
            found = _module_dtype(module)
            if found is not None:
                return found
        return torch.float32

    # -- memory: offload, device maps, VAE switches (the work is in difflux.offload / device_map) ----

    def enable_offload(
        self, strategy: str, *, device: str | torch.device = "cuda", gpu_id: int | None = None, **options: Any
    ) -> None:
        """Enable the registered offload strategy ``strategy`` (``"model"``, ``"sequential"``,
        ``"group"`` or one a plugin registers) with its ``options``; see ``docs/memory.md``.

        Enabling again replaces what was enabled. :raises ConfigError: unknown strategy or option,
        a device that is not available, or a pipeline placed by ``device_map``.
        """
        from . import offload

        offload.enable(self, strategy, offload.execution_device(gpu_id, device), options)

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> None:
        """Keep model components on the CPU; each moves to ``device`` (index ``gpu_id``) when its
        ``forward`` runs, and the one that ran before goes back, in ``model_cpu_offload_seq`` order.
        Peak device memory: the largest model plus activations. Components named in
        ``_exclude_from_cpu_offload`` move to ``device`` and stay there."""
        self.enable_offload("model", device=device, gpu_id=gpu_id)

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> None:
        """Keep the weights on the CPU (modules hold ``meta`` tensors) and copy each leaf module's
        weights to ``device`` only while it runs (``accelerate.cpu_offload``): least memory, slowest."""
        self.enable_offload("sequential", device=device, gpu_id=gpu_id)

    def enable_group_offload(
        self,
        onload_device: str | torch.device,
        offload_device: str | torch.device = "cpu",
        offload_type: str = "block_level",
        num_blocks_per_group: int | None = None,
        use_stream: bool = True,
        pin_memory: bool | None = None,
    ) -> None:
        """Move groups of layers to ``onload_device`` as they run: ``num_blocks_per_group`` blocks of
        each ``ModuleList`` (``offload_type="block_level"``) or single leaf modules (``"leaf_level"``);
        with ``use_stream`` on a device with streams, the next group is prefetched on a side stream
        from pinned CPU memory while the current one runs."""
        device = torch.device(onload_device)
        self.enable_offload(
            "group",
            device=device,
            offload_device=offload_device,
            offload_type=offload_type,
            num_blocks_per_group=num_blocks_per_group,
            use_stream=use_stream,
            pin_memory=pin_memory,
        )

    def maybe_free_model_hooks(self) -> None:
        """Put every offloaded model back on the CPU, hooks kept for the next call (every pipeline
        call does this when it ends); nothing happens without offload."""
        from . import offload

        offload.free(self)

    def remove_all_hooks(self) -> None:
        """Remove the offload hooks: every model whole, with real weights, on the CPU."""
        from . import offload

        offload.remove(self)

    def reset_device_map(self) -> None:
        """Undo a pipeline-level ``device_map``: remove its hooks, move every component to the CPU."""
        from . import device_map

        device_map.reset(self)

    def _vae(self) -> Any:
        for name in ("vae", "vqvae", "movq", "vqgan"):
            found = self.components.get(name)
            if found is not None:
                return found
        raise AttributeError(f"{type(self).__name__} has no VAE component (vae, vqvae, movq or vqgan)")

    def _vae_switch(self, method: str) -> None:
        vae = self._vae()
        switch = getattr(vae, method, None)
        if not callable(switch):
            raise AttributeError(f"{type(self).__name__}: its VAE ({type(vae).__name__}) has no {method}()")
        switch()

    def enable_vae_slicing(self) -> None:
        """Decode (and encode) one image of a batch at a time: less memory, same output."""
        self._vae_switch("enable_slicing")

    def disable_vae_slicing(self) -> None:
        """Decode the whole batch at once again."""
        self._vae_switch("disable_slicing")

    def enable_vae_tiling(self) -> None:
        """Decode (and encode) large images as overlapping tiles blended at the seams: memory flat
        in image size; output within the tile-seam tolerance Diffusers documents."""
        self._vae_switch("enable_tiling")

    def disable_vae_tiling(self) -> None:
        """Decode whole images again."""
        self._vae_switch("disable_tiling")

    # -- running ------------------------------------------------------------------------------

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Keyword arguments for the ``tqdm`` bar of the denoising loop (``disable=True`` hides it)."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable: Iterable[Any] | None = None, total: int | None = None) -> Tqdm:
        """A ``tqdm`` bar over ``iterable`` or for ``total`` steps, with the configured options."""
        from tqdm.auto import tqdm

        config = self.__dict__.get("_progress_bar_config", {})
        if iterable is not None:
            return tqdm(iterable, **config)
        if total is not None:
            return tqdm(total=total, **config)
        raise ValueError("progress_bar() needs iterable= or total=")

    numpy_to_pil = staticmethod(numpy_to_pil)

    def optimize(
        self,
        mode: str = "default",
        *,
        components: Iterable[str] | None = None,
        skip: Iterable[str] = (),
        only: Iterable[str] | None = None,
        **options: Any,
    ) -> Any:
        """Apply the registered fast-path optimisations to the model components, in place.

        ``mode="default"`` keeps outputs within fp16 tolerance of eager; ``"max"`` adds CUDA graphs
        (static shapes) and, on the CPU, bf16 autocast. Pieces that cannot apply are skipped with
        one log line; see ``docs/optimize.md`` for the optimisations and their ``options``.

        :raises ConfigError: unknown mode, optimisation or component name.
        :return: a :class:`difflux.optimize.OptimizeReport` (what applied, what was skipped, why).
        """
        from .optimize import optimize_pipeline

        return optimize_pipeline(self, mode, components=components, skip=skip, only=only, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the pipeline; every concrete pipeline defines this (under ``torch.no_grad()``)."""
        raise TypeError(f"{type(self).__name__} defines no __call__; use a concrete pipeline class")

    def set_attention_backend(self, name: str | None, **options: Any) -> None:
        """Use the attention backend ``name`` in every model component (``None``: back to automatic).

        ``options`` go to the backend's kernel on every call (see ``ModelMixin.set_attention_backend``).
        """
        for model in self._attention_models():
            model.set_attention_backend(name, **options)

    def _attention_models(self) -> list[Any]:
        from .modeling import ModelMixin

        return [c for c in self.components.values() if isinstance(c, ModelMixin)]

    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        """Sliced attention in every model component: less memory, same output (float32: within 1e-5).

        :param slice_size: ``"auto"`` (half of each layer's heads), ``"max"`` (one head at a time),
            heads per slice, or ``None`` (off). An int is refused when no component's layers all
            have that many heads (the UNet's, for Stable Diffusion); a layer with fewer heads (the
            VAE's single-head attention) computes all of its heads together.
        :raises ValueError: a bad ``slice_size``, before anything changes.
        """
        if slice_size is None:
            self.disable_attention_slicing()
            return
        from .sliced_attention import SLICED_BACKEND, check_slice_size

        models = self._attention_models()
        heads = [h for h in (model._fewest_attention_heads() for model in models) if h is not None]
        size = check_slice_size(slice_size, max(heads, default=None), where=f"{type(self).__name__} slice_size")
        for model in models:
            model.set_attention_backend(SLICED_BACKEND, slice_size=size)

    def disable_attention_slicing(self) -> None:
        """Attention modules that were sliced go back to automatic backend selection."""
        for model in self._attention_models():
            model.disable_attention_slicing()

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        """xFormers' memory-efficient attention in every model component (``attention_op`` passed through).

        :raises ConfigError: the ``difflux-attention-xformers`` plugin, xFormers or CUDA is missing
            (the message says which and what to install); nothing is changed then.
        """
        for model in self._attention_models():  # the first one refuses before anything changes
            model.enable_xformers_memory_efficient_attention(attention_op)

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Attention modules using xFormers go back to automatic backend selection."""
        for model in self._attention_models():
            model.disable_xformers_memory_efficient_attention()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    # -- the Hub (through plugins) ------------------------------------------------------------

    @classmethod
    def download(cls, pretrained_model_name: str | os.PathLike[str], **kwargs: Any) -> Path:
        """Fetch what ``from_pretrained`` needs of a repo into the cache and return its local folder.

        Takes the load options of :meth:`from_pretrained` (``revision``, ``variant``,
        ``cache_dir`` ...); downloading repo ids needs ``difflux-hub``.
        """
        options, rest = LoadOptions.split(kwargs)
        if rest:
            raise TypeError(
                f"{cls.__name__}.download got unexpected keyword arguments {', '.join(sorted(rest))}; "
                f"load options: {', '.join(sorted(LoadOptions.field_names()))}"
            )
        return get_registry().resolve_pretrained(pretrained_model_name, options)

    @classmethod
    def _custom_class(
        cls, folder: Path, index: Mapping[str, Any], options: LoadOptions, registry: Registry
    ) -> type[Self] | None:
        """The class custom code provides (``custom_pipeline=`` or a ``[module, Class]`` ``_class_name``).

        Such code never comes from an installed distribution, so nothing is asked of the plugins
        unless ``trust_remote_code=True`` and ``DIFFLUX_DISABLE_REMOTE_CODE`` is unset.
        """
        if options.custom_pipeline is None and not isinstance(index.get("_class_name"), list):
            return None
        if options.custom_pipeline is not None:
            require_trust(f"custom_pipeline={options.custom_pipeline!r}", options)
        else:
            require_trust(f"'_class_name': {index.get('_class_name')!r} in {folder / cls.config_name}", options)
        found = registry.hook.difflux_load_pipeline_class(folder=folder, index=dict(index), options=options)
        if found is None:
            what = (
                f"custom_pipeline={options.custom_pipeline!r}"
                if options.custom_pipeline is not None
                else f"'_class_name': {index.get('_class_name')!r} in {folder / cls.config_name}"
            )
            raise UnknownClassError(
                f"{what} names custom code, which needs the plugin difflux-hub: pip install difflux-hub"
            )
        if not (isinstance(found, type) and issubclass(found, DiffusionPipeline)):
            raise ConfigError(f"custom code for {folder} gave {found!r}, which is not a DiffusionPipeline subclass")
        return typing.cast(type[Self], found)


def _check_json_files(folder: Path) -> None:
    """Refuse a component folder whose JSON files are not regular files or are too large.

    Loaders outside difflux (``transformers``, custom code) read these files themselves; this
    keeps a FIFO or a link to a device from hanging them, before any of them opens a file.
    """
    if not folder.is_dir():
        return
    limit = max_json_bytes()
    for child in folder.iterdir():
        if child.suffix == ".json":
            st = check_regular_file(child, "JSON")
            if st.st_size > limit:
                raise ConfigError(
                    f"{child}: larger than {limit} bytes, the limit for JSON files; "
                    "raise DIFFLUX_MAX_JSON_BYTES if the file is genuine"
                )


def _component_variant(path: Path, name: str, options: LoadOptions) -> LoadOptions:
    """``options`` for one component: without the variant when its folder has none of that variant.

    A pipeline loaded with ``variant="fp16"`` takes the default weights of a component that has no
    fp16 weights, with a warning, as Diffusers does.
    """
    from .serialization import parse_weights_name

    if options.variant is None or not path.is_dir():
        return options
    found = {parsed.variant for child in path.iterdir() if (parsed := parse_weights_name(child.name)) is not None}
    if not found or options.variant in found or None not in found:
        return options
    logger.warning(
        "%s: component %r has no %r variant weights; loading its default weights instead",
        path.parent,
        name,
        options.variant,
    )
    return options.replace(variant=None)
