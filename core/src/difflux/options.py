"""The typed options of ``from_pretrained``, shared by pipelines, models, schedulers and hooks."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["LoadOptions", "parse_dtype"]

_DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp64": "float64",
    "double": "float64",
}


def parse_dtype(value: Any, where: str = "torch_dtype") -> torch.dtype:
    """Turn ``torch.float16``, ``"float16"``, ``"torch.float16"`` or ``"fp16"`` into a ``torch.dtype``."""
    import torch

    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        name = value.removeprefix("torch.")
        name = _DTYPE_ALIASES.get(name, name)
        dtype = getattr(torch, name, None)
        if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            return dtype
    raise ConfigError(
        f"{where}={value!r} is not a floating-point torch dtype "
        "(use e.g. torch.float16, 'float16', 'bfloat16' or 'float32')"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """Everything ``from_pretrained`` accepts besides the model name and component overrides.

    Every field is documented in ``docs/from_pretrained.md``; a test checks it.
    """

    # -- what to load ---------------------------------------------------------------------
    #: A subfolder of the repo or folder that holds the component.
    subfolder: str | None = None
    #: One dtype for every component, or ``{"unet": torch.float16, "default": torch.float32}``.
    torch_dtype: Any = None
    #: Load ``*.{variant}.safetensors`` files (e.g. ``"fp16"``).
    variant: str | None = None
    #: ``None``: safetensors only, with an error pointing here if only ``.bin`` exists;
    #: ``True``: safetensors required; ``False``: also allow pickled ``.bin`` (``weights_only``).
    use_safetensors: bool | None = None
    #: Build modules on the meta device and assign the loaded tensors (no second copy).
    low_cpu_mem_usage: bool = True
    #: Device for the loaded weights: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``{"": "cuda"}``.
    device_map: str | Mapping[str, Any] | None = None
    #: Also return missing / unexpected / mis-shaped keys instead of raising on them.
    output_loading_info: bool = False
    # -- where to find it (the hub plugin reads these) ------------------------------------
    cache_dir: str | os.PathLike[str] | None = None
    force_download: bool = False
    local_files_only: bool = False
    token: str | bool | None = None
    revision: str | None = None
    proxies: Mapping[str, str] | None = None
    use_onnx: bool | None = None
    # -- custom code ----------------------------------------------------------------------
    custom_pipeline: str | None = None
    custom_revision: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def field_names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def split(cls, kwargs: Mapping[str, Any]) -> tuple[Self, dict[str, Any]]:
        """Split ``from_pretrained`` keyword arguments into options and the rest."""
        names = cls.field_names()
        opts = cls(**{k: v for k, v in kwargs.items() if k in names})
        return opts, {k: v for k, v in kwargs.items() if k not in names}

    def __post_init__(self) -> None:
        if isinstance(self.torch_dtype, Mapping):
            for key, value in self.torch_dtype.items():
                parse_dtype(value, where=f"torch_dtype[{key!r}]")
        elif self.torch_dtype is not None and self.torch_dtype != "auto":
            parse_dtype(self.torch_dtype)
        if self.use_safetensors not in (None, True, False):
            raise ConfigError(f"use_safetensors={self.use_safetensors!r}: expected None, True or False")

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def dtype_for(self, component: str | None = None) -> torch.dtype | None:
        """The dtype a component should load in (``None``: keep the file's dtype)."""
        value = self.torch_dtype
        if isinstance(value, Mapping):
            value = value.get(component, value.get("default")) if component else value.get("default")
        if value is None or value == "auto":
            return None
        return parse_dtype(value)
    #: Memory each device may take under a ``device_map``: ``{0: "10GiB", "cpu": "30GiB"}``.
    max_memory: Mapping[int | str, int | str] | None = None
    #: Folder for the weights a ``device_map`` sends to ``"disk"`` (safetensors, memory-mapped).
    offload_folder: str | os.PathLike[str] | None = None
    #: Keep CPU-placed weights of a dispatched model memory-mapped from disk until they are used
    #: (default: on when anything goes to disk).
    offload_state_dict: bool | None = None
