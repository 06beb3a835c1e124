"""The scheduler base class: config handling, loading and saving. The maths live in plugins."""

from __future__ import annotations

import dataclasses
import logging
import os
import types
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from ._pushing import PushToHubMixin
from .config import Bound, ConfigMixin, FrozenConfig
from .errors import ConfigError, ConfigRangeError, add_context
from .options import LoadOptions
from .outputs import BaseOutput
from .registry import get_registry

if TYPE_CHECKING:
    import torch

__all__ = ["SCHEDULER_CONFIG_BOUNDS", "SchedulerMixin", "SchedulerOutput"]


#: The ranges :class:`SchedulerMixin` declares: a training schedule of 1 to 10**6 steps, betas
#: (noise variances per step) in [0, 1], finite.
SCHEDULER_CONFIG_BOUNDS: Mapping[str, Bound | None] = {
    "num_train_timesteps": Bound(ge=1, le=10**6),
    "beta_start": Bound(ge=0, le=1),
    "beta_end": Bound(ge=0, le=1),
    "trained_betas": Bound(ge=0, le=1, max_items=10**6),
    "steps_offset": Bound(ge=0, le=10**6),
    "original_inference_steps": Bound(ge=1, le=10**6),
}


logger = logging.getLogger("difflux")
_reported_ignored: set[tuple[str, frozenset[str]]] = set()


def _allows_none(hint: Any) -> bool:
    """Whether an ``__init__`` annotation admits ``None``."""
    if hint is Any or hint is None or hint is type(None):
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _allows_none(typing.get_args(hint)[0])
    if origin is typing.Union or origin is types.UnionType:
        return any(_allows_none(a) for a in typing.get_args(hint))
    return False


@dataclasses.dataclass
class SchedulerOutput(BaseOutput):
    """What ``step`` returns: the previous sample and, where defined, the predicted clean sample."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class SchedulerMixin(ConfigMixin, PushToHubMixin):
    """Base of every scheduler: a typed holder of config and state (see :class:`difflux.protocols.Scheduler`)."""

    config_name: ClassVar[str] = "scheduler_config.json"
    #: How many model evaluations one ``step`` needs per timestep (2 for Heun).
    order: ClassVar[int] = 1
    #: Ranges of the config keys Diffusers schedulers share; see :class:`difflux.config.Bound`.
    config_bounds: ClassVar[Mapping[str, Bound | None]] = SCHEDULER_CONFIG_BOUNDS

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        subfolder: str | None = None,
        **kwargs: Any,
    ) -> Self:
        """Load from a folder (or repo id, with ``difflux-hub``) holding ``scheduler_config.json``.

        Keyword arguments that are load options (``revision``, ``cache_dir`` ...) go to the
        resolver; the others override config entries.
        """
        options, overrides = LoadOptions.split({**kwargs, "subfolder": subfolder})
        registry = get_registry()
        folder = registry.resolve_pretrained(pretrained_model_name_or_path, options)
        scheduler = cls._from_folder(folder, subfolder, **overrides)
        # Loaded on its own: difflux_component_loaded sees it with name="" (pipelines call _from_folder
        # and pass the component's name themselves).
        return typing.cast(Self, registry.component_loaded("", scheduler, options))

    @classmethod
    def _from_folder(cls, folder: str | os.PathLike[str], subfolder: str | None = None, **overrides: Any) -> Self:
        """Build from ``folder/[subfolder/]scheduler_config.json`` (no resolving, no hooks)."""
        config = cls.load_config(folder, subfolder)
        try:
            return cls.from_config(config, **overrides)
        except ConfigError as exc:  # name the file the bad value came from
            add_context(exc, str(Path(folder, subfolder or "", cls.config_name)))
            raise

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write ``scheduler_config.json`` into ``save_directory``."""
        return self.save_config(save_directory)

    @classmethod
    def compatible_classes(cls) -> list[type[SchedulerMixin]]:
        """This class and the installed classes named in ``_compatibles`` (their configs load in this class)."""
        registry = get_registry()
        found: list[type[SchedulerMixin]] = [cls]
        for name in cls._compatibles:
            if name != cls.__name__ and name in registry.schedulers:
                found.append(registry.scheduler_class(name))
        return found

    @property
    def compatibles(self) -> list[type[SchedulerMixin]]:
        """See :meth:`compatible_classes` (the class itself comes first, as in Diffusers' list)."""
        return self.compatible_classes()

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal look-up fails: a config value read as an attribute, as Diffusers allows
        # (with the same deprecation warning); anything else is a plain AttributeError.
        if not name.startswith("_"):
            config = self.__dict__.get("_internal_config")
            if config is not None and name in config:
                warnings.warn(
                    f"Accessing config attribute `{name}` directly via '{type(self).__name__}' object attribute "
                    f"is deprecated. Please access '{name}' over '{type(self).__name__}'s config object instead, "
                    f"e.g. 'scheduler.config.{name}'.",
                    FutureWarning,
                    stacklevel=2,
                )
                return config[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def _validated_init_kwargs(
        cls, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], frozenset[str]]:
        """An explicit ``None`` for an option whose annotation has no ``None`` means "the default" (Diffusers'
        configs and signatures write ``None`` for optional values)."""
        if any(v is None for v in kwargs.values()):
            fields = cls._config_fields()
            kwargs = {
                k: v
                for k, v in kwargs.items()
                if not (v is None and k in fields and fields[k][1] is not ... and not _allows_none(fields[k][0]))
            }
        return super()._validated_init_kwargs(args, kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, /, **overrides: Any) -> Self:
        """Build from a config mapping, also one written for another scheduler class (a swap).

        A value from ``config`` that this class does not accept for a key it shares with the source
        (``DDPMScheduler``'s ``variance_type="fixed_small"`` in ``DPMSolverMultistepScheduler``) is
        kept in ``.config`` and ignored: this class runs with its default for that key. ``overrides``
        are checked strictly.

        :raises ConfigError: for an invalid override, or a config that is invalid for other reasons.
        """
        try:
            return super().from_config(config, **overrides)
        except ConfigError:
            if not config:
                raise
            ignored = cls._values_not_understood(config, overrides)
            if not ignored:
                raise
        data = {k: v for k, v in config.items() if k not in ignored}
        used = getattr(config, "used_defaults", None)
        source: Mapping[str, Any] = data if used is None else FrozenConfig(data, used)
        obj = super().from_config(source, **overrides)
        obj.register_to_config(**ignored)
        key = (cls.__name__, frozenset(ignored))
        if key not in _reported_ignored:
            _reported_ignored.add(key)
            logger.info(
                "%s: config values %s are not valid for this class (they come from another scheduler's config); "
                "kept in .config and ignored, the defaults are used",
                cls.__name__,
                ", ".join(f"{k}={v!r}" for k, v in sorted(ignored.items())),
            )
        return obj

    @classmethod
    def _values_not_understood(cls, config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``config`` (not overridden) that fail this class's validation one by one."""
        names = cls.init_parameter_names()
        bad: dict[str, Any] = {}
        for key, value in config.items():
            if key not in names or key in overrides or key.startswith("_"):
                continue
            try:
                cls._validated_init_kwargs((), {key: value})
            except ConfigRangeError:
                raise  # NaN or out of range is wrong for every class, not a value of another class
            except ConfigError:
                bad[key] = value
        return bad

    @classmethod
    def _quiet_config_keys(cls, config: Mapping[str, Any]) -> frozenset[str]:
        """Keys of any compatible scheduler class: expected in a swapped-in config, not worth a warning."""
        registry = get_registry()
        keys: set[str] = set()
        for name in set(cls._compatibles) - {cls.__name__}:
            if name in registry.schedulers:
                keys |= registry.scheduler_class(name).init_parameter_names()
        return frozenset(keys)
