"""Component configs, read from and written to the Diffusers JSON files.

A class that mixes in :class:`ConfigMixin` gets its ``__init__`` arguments recorded as its
config, validated by a pydantic model built from the ``__init__`` signature.  No decorator is
needed: recording is installed by ``__init_subclass__``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import math
import os
import tempfile
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import pydantic

from ._files import read_json
from .errors import ConfigError, ConfigRangeError

__all__ = [
    "DIFFUSERS_FORMAT_VERSION",
    "Bound",
    "ConfigMixin",
    "FrozenConfig",
    "read_json",
    "write_json_atomic",
]

logger = logging.getLogger("difflux")

#: The Diffusers release whose on-disk format difflux writes (``_diffusers_version``).
DIFFUSERS_FORMAT_VERSION = "0.42.1"

# Keys that describe the file rather than the component; rewritten on every save.
_FORMAT_KEYS = frozenset({"_class_name", "_diffusers_version"})
# The item in which Diffusers' configs list the init arguments that took their defaults.
USED_DEFAULTS_KEY = "_use_default_values"
_reported_extras: set[tuple[str, frozenset[str]]] = set()


class FrozenConfig(Mapping[str, Any]):
    """A read-only mapping that also allows attribute access (``config.num_train_timesteps``).

    ``used_defaults`` names the entries that took their ``__init__`` defaults; it travels with
    the mapping (so ``OtherClass.from_config(obj.config)`` can leave them out) without being one
    of its items.
    """

    __slots__ = ("_data", "used_defaults")

    _data: dict[str, Any]
    used_defaults: frozenset[str]

    def __init__(self, data: Mapping[str, Any] | None = None, used_defaults: frozenset[str] = frozenset()) -> None:
        object.__setattr__(self, "_data", dict(data or {}))
        object.__setattr__(self, "used_defaults", frozenset(used_defaults))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError("a config is read-only; use register_to_config() or from_config(**overrides)")

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenConfig, (self._data, self.used_defaults))

    def __repr__(self) -> str:
        return f"FrozenConfig({self._data!r})"

    def to_dict(self) -> dict[str, Any]:
        """A plain, mutable copy."""
        return dict(self._data)


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays and torch tensors
    if callable(tolist):
        return tolist()
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")
    raise TypeError(f"cannot write a value of type {type(value).__name__} to JSON: {value!r}")


def write_json_atomic(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Write ``data`` as sorted, indented JSON; the file is replaced only once fully written."""
    path = Path(path)
    text = json.dumps(dict(data), indent=2, sort_keys=True, default=_json_default) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# -- value ranges ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Bound:
    """The range a numeric config value must lie in, checked whenever a config is validated.

    A class declares bounds in its ``config_bounds`` mapping (``{"layers_per_block": Bound(ge=1,
    le=1024)}``; merged along the class hierarchy, a subclass entry replaces its base's and
    ``None`` removes it) or in the ``__init__`` annotation (``Annotated[int, Bound(ge=1)]``;
    ``annotated_types`` / ``pydantic.Field`` constraints there are honoured too).

    A bound applies to a number and to every number inside a tuple or list (nested ones too);
    ``None``, strings and booleans pass. ``±inf`` is refused unless ``allow_inf``; ``NaN`` is
    refused in every config value, bounded or not. ``max_items`` limits the length of a
    sequence (at each level).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    allow_inf: bool = False
    max_items: int | None = None

    def describe(self) -> str:
        """The range in words, for error messages: ``">= 1, <= 1024, finite"``."""
        parts = [
            f"{op} {v:g}"
            for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
            if v is not None
        ]
        if not self.allow_inf:
            parts.append("finite")
        if self.max_items is not None:
            parts.append(f"at most {self.max_items} items")
        return ", ".join(parts)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of range, or ``None`` when it is fine."""
        if isinstance(value, (list, tuple)):
            if self.max_items is not None and len(value) > self.max_items:
                return f"{len(value)} items, more than the {self.max_items} allowed"
            for i, item in enumerate(value):
                why = self.problem(item)
                if why is not None:
                    return f"item {i}: {why}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and math.isnan(value):
            return "NaN is not a number"
        if isinstance(value, float) and math.isinf(value) and not self.allow_inf:
            return f"{value} is not allowed here (must be finite)"
        for ok, text in (
            (self.ge is None or value >= self.ge, f"must be >= {self.ge}"),
            (self.gt is None or value > self.gt, f"must be > {self.gt}"),
            (self.le is None or value <= self.le, f"must be <= {self.le}"),
            (self.lt is None or value < self.lt, f"must be < {self.lt}"),
        ):
            if not ok:
                return text
        return None


def _metadata_bounds(meta: Any) -> Iterator[Bound]:
    """``Bound``s for one piece of ``Annotated`` metadata (``Bound``, ``annotated_types``, ``Field``)."""
    import annotated_types as at

    if isinstance(meta, Bound):
        yield meta
    elif isinstance(meta, at.Interval):
        yield Bound(ge=meta.ge, gt=meta.gt, le=meta.le, lt=meta.lt, allow_inf=True)  # type: ignore[arg-type]
    elif isinstance(meta, at.Ge):
        yield Bound(ge=meta.ge, allow_inf=True)  # type: ignore[arg-type]
    elif isinstance(meta, at.Gt):
        yield Bound(gt=meta.gt, allow_inf=True)  # type: ignore[arg-type]
    elif isinstance(meta, at.Le):
        yield Bound(le=meta.le, allow_inf=True)  # type: ignore[arg-type]
    elif isinstance(meta, at.Lt):
        yield Bound(lt=meta.lt, allow_inf=True)  # type: ignore[arg-type]
    elif isinstance(meta, at.MaxLen):
        yield Bound(max_items=meta.max_length, allow_inf=True)
    elif isinstance(meta, pydantic.fields.FieldInfo):
        for inner in meta.metadata:
            yield from _metadata_bounds(inner)


def _annotated_bounds(hint: Any) -> Iterator[Bound]:
    """The bounds an annotation carries (``Annotated`` metadata, also inside unions)."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        base, *metadata = typing.get_args(hint)
        for meta in metadata:
            yield from _metadata_bounds(meta)
        yield from _annotated_bounds(base)
    elif origin is typing.Union or origin is types.UnionType:
        for member in typing.get_args(hint):
            yield from _annotated_bounds(member)


def _has_nan(value: Any, depth: int = 0) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if depth < 32 and isinstance(value, (list, tuple)):
        return any(_has_nan(v, depth + 1) for v in value)
    if depth < 32 and isinstance(value, dict):
        return any(_has_nan(v, depth + 1) for v in value.values())
    return False


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " ...)"


# -- validation without building a pydantic model, when the values plainly fit -----------------

_MISS: Any = object()
_SCALARS = (bool, int, float, str)


def _plain(hint: Any, value: Any, in_union: bool = False) -> Any:
    """What pydantic (lax mode) returns for ``value`` under ``hint``, when that is obvious: the
    value itself if its type is exactly the annotated one, a tuple for a list where a tuple is
    annotated, a float for an int where a float is annotated (outside unions, whose member
    pydantic picks by exactness). ``_MISS`` when anything else would be involved (another
    conversion, an error, a type this does not cover), so that the pydantic model decides."""
    if hint is Any:
        return value
    if hint in _SCALARS:
        if type(value) is hint:
            return value
        if hint is float and type(value) is int and not in_union and abs(value) <= 2**53:
            return float(value)
        return _MISS
    if hint is None or hint is type(None):
        return None if value is None else _MISS
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None:
            return None if type(None) in args else _MISS
        if isinstance(value, list) and any(a is list or typing.get_origin(a) is list for a in args):
            return _MISS  # list or tuple: pydantic's smart union picks; let it
        for member in args:
            out = _plain(member, value, in_union=True)
            if out is not _MISS:
                return out
        return _MISS
    if origin is typing.Annotated:
        base, *metadata = args
        return _plain(base, value, in_union) if all(isinstance(m, Bound) for m in metadata) else _MISS
    if origin is typing.Literal:
        return value if any(type(value) is type(a) and value == a for a in args) else _MISS
    if origin is tuple and type(value) in (tuple, list):
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_plain(args[0], v, in_union) for v in value]
        elif len(args) == len(value) and args != ((),):
            items = [_plain(a, v, in_union) for a, v in zip(args, value, strict=True)]
        else:
            return _MISS
        return _MISS if any(v is _MISS for v in items) else tuple(items)
    return _MISS


def _plainly_valid(fields: Mapping[str, tuple[Any, Any]], values: Mapping[str, Any]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for name, value in values.items():
        field = fields.get(name)
        checked = _MISS if field is None else _plain(field[0], value)
        if checked is _MISS:
            return None
        out[name] = checked
    return out


def _recording(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``init`` so that the most derived class's arguments become the config."""

    @functools.wraps(init)
    def __init__(self: ConfigMixin, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        if cls.__init__ is __init__ and "_internal_config" not in self.__dict__:
            kwargs, config = cls._record_init(args, kwargs)
            args = ()
            object.__setattr__(self, "_internal_config", config)
        init(self, *args, **kwargs)

    __init__._difflux_records_config = True  # type: ignore[attr-defined]
    return __init__


class ConfigMixin:
    """Record ``__init__`` arguments as a config; read and write them as Diffusers JSON."""

    #: File name of the config inside a component folder.
    config_name: ClassVar[str] = "config.json"
    #: ``__init__`` arguments that are not part of the config (objects, not settings).
    ignore_for_config: ClassVar[frozenset[str]] = frozenset()
    #: Diffusers class names whose configs this class also accepts.
    _compatibles: ClassVar[tuple[str, ...]] = ()
    #: Ranges of numeric config values (see :class:`Bound`), merged along the class hierarchy;
    #: a name that is not an ``__init__`` argument of the class is ignored.
    config_bounds: ClassVar[Mapping[str, Bound | None]] = {}

    _internal_config: FrozenConfig
    # The pydantic model validating this class's ``__init__`` arguments, built on first need.
    _difflux_config_model: ClassVar[type[pydantic.BaseModel] | None] = None
    _difflux_config_fields: ClassVar[dict[str, tuple[Any, Any]] | None] = None
    _difflux_config_bounds: ClassVar[dict[str, tuple[Bound, ...]] | None] = None
    _difflux_part_models: ClassVar[dict[frozenset[str], type[pydantic.BaseModel]] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_difflux_records_config", False):
            cls.__init__ = _recording(init)  # type: ignore[method-assign]

    # -- the schema -----------------------------------------------------------------------

    @classmethod
    def _init_signature(cls) -> inspect.Signature:
        init = inspect.unwrap(cls.__init__)
        return inspect.signature(init)

    @classmethod
    def init_parameter_names(cls) -> frozenset[str]:
        """Names that ``__init__`` accepts as keywords (and so that a config may set)."""
        return frozenset(
            name
            for name, p in list(cls._init_signature().parameters.items())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )

    @classmethod
    def _config_fields(cls) -> dict[str, tuple[Any, Any]]:
        """``{name: (annotation, default)}`` of the keyword arguments of ``__init__`` (cached per class);
        ``default`` is ``...`` for a required argument."""
        cached = cls.__dict__.get("_difflux_config_fields")
        if cached is not None:
            return typing.cast(dict[str, tuple[Any, Any]], cached)
        init = inspect.unwrap(cls.__init__)
        try:
            hints = typing.get_type_hints(init, include_extras=True)
        except Exception:  # unresolvable forward references: validate those fields as Any
            hints = {}
        fields: dict[str, tuple[Any, Any]] = {}
        for name, p in list(inspect.signature(init).parameters.items())[1:]:
            if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                continue
            default = ... if p.default is p.empty else p.default
            fields[name] = (hints.get(name, Any), default)
        cls._difflux_config_fields = fields
        return fields

    @classmethod
    def _config_bounds(cls) -> dict[str, tuple[Bound, ...]]:
        """``{name: bounds}`` from ``config_bounds`` along the MRO and from ``Annotated`` hints (cached)."""
        cached = cls.__dict__.get("_difflux_config_bounds")
        if cached is not None:
            return typing.cast(dict[str, tuple[Bound, ...]], cached)
        declared: dict[str, Bound | None] = {}
        for klass in reversed(cls.__mro__):
            table = klass.__dict__.get("config_bounds")
            if isinstance(table, Mapping):
                declared.update(table)
        bounds: dict[str, tuple[Bound, ...]] = {}
        for name, (hint, _) in cls._config_fields().items():
            found = list(_annotated_bounds(hint))
            extra = declared.get(name)
            if extra is not None:
                found.append(extra)
            if found:
                bounds[name] = tuple(found)
        cls._difflux_config_bounds = bounds
        return bounds

    @classmethod
    def _check_ranges(cls, values: Mapping[str, Any]) -> None:
        """Refuse NaN anywhere and values outside their declared :class:`Bound`."""
        bounds = cls._config_bounds()
        for name, value in values.items():
            if _has_nan(value):
                raise ConfigRangeError(
                    f"invalid config for {cls.__name__}: {name}={_short(value)}: NaN is not a valid value"
                )
            for bound in bounds.get(name, ()):
                why = bound.problem(value)
                if why is not None:
                    raise ConfigRangeError(
                        f"invalid config for {cls.__name__}: {name}={_short(value)}: {why} "
                        f"(allowed: {bound.describe()})"
                    )

    @classmethod
    def _config_model(cls) -> type[pydantic.BaseModel]:
        cached = cls.__dict__.get("_difflux_config_model")
        if cached is not None:
            return typing.cast(type[pydantic.BaseModel], cached)
        model = pydantic.create_model(  # type: ignore[call-overload]
            f"{cls.__name__}Config",
            __config__=pydantic.ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=()),
            **cls._config_fields(),
        )
        cls._difflux_config_model = model
        return typing.cast(type[pydantic.BaseModel], model)

    @classmethod
    def _record_init(cls, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[dict[str, Any], FrozenConfig]:
        """The keyword arguments ``__init__`` runs with, and the config they record.

        Here: every validated argument but ``ignore_for_config``. Pipelines override it to record
        their config values and not their components.
        """
        kwargs, defaulted = cls._validated_init_kwargs(args, kwargs)
        config = {k: v for k, v in kwargs.items() if k not in cls.ignore_for_config}
        return kwargs, FrozenConfig(config, defaulted - cls.ignore_for_config)

    @classmethod
    def _validated_init_kwargs(
        cls, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], frozenset[str]]:
        """The validated ``__init__`` arguments, and the names that took their defaults.

        Values that plainly have their annotated type are taken as they are (JSON lists become
        tuples where a tuple is annotated), which is what the pydantic model would return; only
        a config with some other value builds and runs that model (for its conversions and errors).
        """
        sig = cls._init_signature()
        try:
            bound = sig.bind(None, *args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}(): {exc}") from None
        given = set(bound.arguments)
        bound.apply_defaults()
        values = dict(list(bound.arguments.items())[1:])
        var_kw = {n for n, p in sig.parameters.items() if p.kind is p.VAR_KEYWORD}
        extra: dict[str, Any] = {}
        for n in var_kw:
            extra.update(values.pop(n, {}))
        validated = _plainly_valid(cls._config_fields(), values)
        if validated is None:
            validated = cls._run_model(cls._config_model(), values)
        cls._check_ranges(validated)
        validated.update(extra)
        return validated, frozenset(values) - given

    @classmethod
    def _run_model(cls, model: type[pydantic.BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
        try:
            checked = model.model_validate(dict(values))
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in e['loc'])}={_short(e.get('input'))}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"invalid config for {cls.__name__}: {problems}") from None
        return {name: getattr(checked, name) for name in values}

    @classmethod
    def _validated_values(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Validate some ``__init__`` arguments only (a pipeline's config values, not its components),
        against their annotations and ranges, as :meth:`_validated_init_kwargs` does for all of them."""
        fields = cls._config_fields()
        part = {name: fields[name] for name in values}
        validated = _plainly_valid(part, values)
        if validated is None:
            models = cls.__dict__.get("_difflux_part_models")
            if models is None:
                models = {}
                cls._difflux_part_models = models
            key = frozenset(part)
            model = models.get(key)
            if model is None:
                model = pydantic.create_model(  # type: ignore[call-overload]
                    f"{cls.__name__}Values",
                    __config__=pydantic.ConfigDict(
                        arbitrary_types_allowed=True, extra="forbid", protected_namespaces=()
                    ),
                    **part,
                )
                models[key] = model
            validated = cls._run_model(model, values)
        cls._check_ranges(validated)
        return validated

    # -- the public API -------------------------------------------------------------------

    @property
    def config(self) -> FrozenConfig:
        """The component's settings, as written to its JSON file (read-only)."""
        return self._internal_config

    def register_to_config(self, **kwargs: Any) -> None:
        """Add or change config entries (for values an ``__init__`` derives)."""
        old = self._internal_config
        object.__setattr__(self, "_internal_config", FrozenConfig({**old, **kwargs}, old.used_defaults - set(kwargs)))

    @classmethod
    def _quiet_config_keys(cls, config: Mapping[str, Any]) -> frozenset[str]:
        """Extra keys that are expected (e.g. from a compatible class) and not worth a warning."""
        return frozenset()

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, /, **overrides: Any) -> Self:
        """Build an instance from a config mapping (e.g. another instance's ``.config``).

        Keys that are not ``__init__`` arguments are kept in ``.config`` and reported once. Keys
        that the source config only had as defaults (its ``_use_default_values``) are left out,
        so this class uses its own defaults for them, as Diffusers does when swapping schedulers.
        """
        data = dict(config or {})
        # Diffusers' configs carry the names as an item; difflux's as FrozenConfig.used_defaults.
        listed = data.pop(USED_DEFAULTS_KEY, None)
        if listed is not None and not (isinstance(listed, (list, tuple)) and all(isinstance(k, str) for k in listed)):
            raise ConfigError(
                f"invalid config for {cls.__name__}: {USED_DEFAULTS_KEY}={_short(listed)}: expected a list "
                "of config key names (the keys that took their defaults), or leave the key out"
            )
        used_defaults = set(listed or ()) | set(getattr(config, "used_defaults", ()))
        data = {k: v for k, v in data.items() if k not in used_defaults}
        data.update(overrides)
        names = cls.init_parameter_names()
        kwargs = {k: v for k, v in data.items() if k in names}
        extras = {k: v for k, v in data.items() if k not in names and k not in _FORMAT_KEYS}
        obj = cls(**kwargs)
        if extras:
            obj.register_to_config(**{k: v for k, v in extras.items() if k not in obj.config})
            loud = frozenset(k for k in extras if not k.startswith("_")) - cls._quiet_config_keys(data)
            key = (cls.__qualname__, loud)
            if loud and key not in _reported_extras:
                _reported_extras.add(key)
                logger.warning(
                    "%s: config keys %s are not arguments of this class; they are kept in .config "
                    "and written back on save",
                    cls.__name__,
                    ", ".join(sorted(loud)),
                )
        return obj

    @classmethod
    def load_config(cls, path: str | os.PathLike[str], subfolder: str | None = None) -> dict[str, Any]:
        """Read the config JSON from a folder (or a JSON file path) as a dict."""
        path = Path(path)
        if subfolder:
            path = path / subfolder
        file = path if path.suffix == ".json" and not path.is_dir() else path / cls.config_name
        if not os.path.lexists(file):
            where = "folder does not exist" if not file.parent.exists() else "no such file"
            raise ConfigError(f"{file}: {where}; expected the {cls.__name__} config file {cls.config_name}")
        return read_json(file, cls.config_name)

    def config_for_save(self) -> dict[str, Any]:
        """The dict written to the JSON file: the config plus ``_class_name`` and ``_diffusers_version``."""
        data = {k: v for k, v in self._internal_config.items() if k not in _FORMAT_KEYS and k != USED_DEFAULTS_KEY}
        data["_class_name"] = type(self).__name__
        data["_diffusers_version"] = DIFFUSERS_FORMAT_VERSION
        return data

    def save_config(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write the config JSON into ``save_directory`` (created if needed); returns the file path."""
        folder = Path(save_directory)
        if folder.is_symlink():  # write where the link points; the link stays
            folder = Path(os.path.realpath(folder))
        if folder.is_file():
            raise ConfigError(f"{folder}: is a file; save_config needs a folder")
        return write_json_atomic(folder / self.config_name, self.config_for_save())

    def to_json_string(self) -> str:
        """The config as Diffusers would write it."""
        return json.dumps(self.config_for_save(), indent=2, sort_keys=True, default=_json_default) + "\n"
