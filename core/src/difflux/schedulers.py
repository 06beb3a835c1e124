"""The scheduler base class: config handling, loading and saving. The maths live in plugins."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from ._pushing import PushToHubMixin
from .config import Bound, ConfigMixin
from .errors import ConfigError
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
            if len(exc.args) == 1 and isinstance(exc.args[0], str):
                exc.args = (f"{Path(folder, subfolder or '', cls.config_name)}: {exc.args[0]}",)
            raise

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write ``scheduler_config.json`` into ``save_directory``."""
        return self.save_config(save_directory)

    @classmethod
    def compatible_classes(cls) -> list[type[SchedulerMixin]]:
        """The installed classes named in ``_compatibles`` (their configs load in this class)."""
        registry = get_registry()
        return [registry.scheduler_class(n) for n in cls._compatibles if n in registry.schedulers]

    @property
    def compatibles(self) -> list[type[SchedulerMixin]]:
        return self.compatible_classes()

    @classmethod
    def _quiet_config_keys(cls, config: Mapping[str, Any]) -> frozenset[str]:
        source = config.get("_class_name")
        if source == cls.__name__ or source not in cls._compatibles:
            return frozenset()
        registry = get_registry()
        if source not in registry.schedulers:
            return frozenset()
        return frozenset(registry.scheduler_class(source).init_parameter_names())
