"""The typed options of ``from_pretrained``, shared by pipelines, models, schedulers and hooks."""

from __future__ import annotations

import dataclasses
import functools
import os
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

from .errors import ConfigError, RemoteCodeError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DISABLE_REMOTE_CODE_ENV",
    "LoadOptions",
    "check_bool",
    "parse_dtype",
    "remote_code_disabled",
    "require_trust",
]

#: Set to ``1`` to refuse every custom pipeline and component, even with ``trust_remote_code=True``.
DISABLE_REMOTE_CODE_ENV = "DIFFLUX_DISABLE_REMOTE_CODE"

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


def check_bool(name: str, value: Any, *, optional: bool = False, where: str = "") -> None:
    """Refuse anything but ``True`` / ``False`` (and ``None`` when ``optional``) for a switch.

    A switch that grants or denies something (``trust_remote_code``, ``safe_serialization`` ...)
    must not treat the string ``"False"`` or the number ``2`` as a yes.

    :raises ConfigError: naming the option and the value.
    """
    if value is True or value is False or (optional and value is None):
        return
    allowed = "True, False or None" if optional else "True or False"
    place = f"{where}: " if where else ""
    raise ConfigError(f"{place}{name}={value!r} ({type(value).__name__}): expected {allowed} (a bool)")


def remote_code_disabled() -> bool:
    """Whether ``DIFFLUX_DISABLE_REMOTE_CODE`` is set (anything but empty, ``0``, ``false``, ``no``)."""
    return os.environ.get(DISABLE_REMOTE_CODE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def require_trust(what: str, options: LoadOptions) -> None:
    """Refuse to run ``what`` (code not from an installed distribution) unless the user consented.

    Called before such code is downloaded, read or imported: custom pipelines (a repo, a local
    ``.py`` file or folder), ``[module, Class]`` entries, custom components.

    :raises RemoteCodeError: ``DIFFLUX_DISABLE_REMOTE_CODE`` is set, or ``trust_remote_code`` is not ``True``.
    """
    if remote_code_disabled():
        raise RemoteCodeError(
            f"{what} is code from outside the installed packages, and {DISABLE_REMOTE_CODE_ENV} is set, "
            "which forbids running such code (unset it to allow trust_remote_code=True)"
        )
    if options.trust_remote_code is not True:
        raise RemoteCodeError(
            f"{what} is code from outside the installed packages; difflux imports it only when you pass "
            "trust_remote_code=True (read the code first: it runs with your permissions)"
        )


@functools.cache
def _switches() -> dict[str, bool]:
    """``{field: optional}`` of the ``LoadOptions`` fields annotated ``bool`` or ``bool | None``."""
    hints = typing.get_type_hints(LoadOptions)
    out: dict[str, bool] = {}
    for name, hint in hints.items():
        if hint is bool:
            out[name] = False
        elif set(typing.get_args(hint)) == {bool, type(None)}:
            out[name] = True
    return out


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
    #: Where the weights go: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``{"": "cuda"}``; for a model
    #: ``"auto"`` or ``{"module.path": device | "disk"}``; for a pipeline ``"balanced"`` (``docs/memory.md``).
    device_map: str | Mapping[str, Any] | None = None
    #: Memory each device may take under a ``device_map``: ``{0: "10GiB", "cpu": "30GiB"}``.
    max_memory: Mapping[int | str, int | str] | None = None
    #: Folder for the weights a ``device_map`` sends to ``"disk"`` (safetensors, memory-mapped).
    offload_folder: str | os.PathLike[str] | None = None
    #: Keep CPU-placed weights of a dispatched model memory-mapped from disk until they are used
    #: (default: on when anything goes to disk).
    offload_state_dict: bool | None = None
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
        for name, optional in _switches().items():
            check_bool(name, getattr(self, name), optional=optional)
        if self.token is not None and not isinstance(self.token, (str, bool)):
            raise ConfigError(f"token={self.token!r}: expected a token string, True (the saved token) or False")
        if isinstance(self.torch_dtype, Mapping):
            for key, value in self.torch_dtype.items():
                parse_dtype(value, where=f"torch_dtype[{key!r}]")
        elif self.torch_dtype is not None and self.torch_dtype != "auto":
            parse_dtype(self.torch_dtype)

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
