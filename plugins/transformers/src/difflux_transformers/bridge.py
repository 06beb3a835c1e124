"""Load and check ``transformers`` components (models, tokenizers, processors) for difflux pipelines."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from difflux import ConfigError, LoadError, LoadOptions

from . import LOADABLE_BASES, RENAMED_CLASSES

__all__ = ["is_loadable_class", "load_component", "resolve_class"]

logger = logging.getLogger("difflux")

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _bases() -> tuple[type, ...]:
    import transformers

    return tuple(getattr(transformers, name) for name in LOADABLE_BASES)


def is_loadable_class(obj: Any) -> bool:
    """Whether ``obj`` is a ``transformers`` model, tokenizer, processor, image processor or feature extractor class."""
    return isinstance(obj, type) and issubclass(obj, _bases())


def resolve_class(class_name: str, where: str = "") -> Any:
    """The class ``transformers.<class_name>``, refusing anything that is not a loadable component class.

    ``where`` (a file or folder) goes into the error message.
    """
    place = f" ({where})" if where else ""
    if not class_name.isidentifier() or class_name.startswith("_"):
        raise ConfigError(f"transformers.{class_name}{place}: not a class name that transformers exports")
    name = RENAMED_CLASSES.get(class_name, class_name)
    if name != class_name:
        logger.info("transformers.%s%s is loaded as transformers.%s (renamed upstream)", class_name, place, name)
    import transformers

    try:
        obj = getattr(transformers, name)
    except (AttributeError, ImportError, RuntimeError) as exc:
        raise ConfigError(
            f"transformers.{name}{place}: the installed transformers {transformers.__version__} has no such "
            f"class ({exc}); upgrade transformers or fix the entry in model_index.json"
        ) from None
    if not is_loadable_class(obj):
        what = type(obj).__name__ if not isinstance(obj, type) else f"the class {obj.__qualname__}"
        raise ConfigError(
            f"transformers.{name}{place} is {what}, not a model, tokenizer, processor, image processor or "
            f"feature extractor class (subclasses of {', '.join(LOADABLE_BASES)}); difflux loads only those "
            "from model_index.json"
        )
    return obj


def _weight_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)]


def _variant_of(path: Path) -> str | None:
    """``"fp16"`` for ``model.fp16.safetensors`` or ``model.fp16-00001-of-00002.safetensors``, else ``None``."""
    parts = path.name.split(".")
    return parts[-2].split("-")[0] if len(parts) >= 3 else None


def _model_kwargs(folder: Path, options: LoadOptions) -> dict[str, Any]:
    files = _weight_files(folder)
    kwargs: dict[str, Any] = {}
    chosen = [p for p in files if options.variant is not None and _variant_of(p) == options.variant]
    if chosen:
        kwargs["variant"] = options.variant
    else:
        if options.variant is not None:
            logger.info("%s: no %r variant of the weights; loading the default files", folder, options.variant)
        chosen = [p for p in files if _variant_of(p) is None]
    has_safe = any(p.name.endswith(".safetensors") for p in chosen)
    has_bin = any(p.name.endswith(".bin") for p in chosen)
    if options.use_safetensors is None and has_bin and not has_safe:
        raise LoadError(
            f"{folder}: only pickled .bin weights here; pass use_safetensors=False to load them "
            "(read with weights_only=True), or convert them to .safetensors"
        )
    if options.use_safetensors is True:
        kwargs["use_safetensors"] = True
    elif options.use_safetensors is None:
        kwargs["use_safetensors"] = has_safe or None
    dtype = options.torch_dtype
    if dtype == "auto":
        kwargs["dtype"] = "auto"
    elif dtype is not None:
        kwargs["dtype"] = options.dtype_for(None)
    else:  # difflux's rule for None (docs/from_pretrained.md): the default dtype, not transformers' "auto"
        import torch

        kwargs["dtype"] = torch.get_default_dtype()
    device_map = options.device_map
    if device_map is not None:
        kwargs["device_map"] = str(device_map) if not isinstance(device_map, (str, dict)) else device_map
        # transformers plans its own per-module maps; it reads its shards lazily, so offload_state_dict has no
        # counterpart there
        if options.max_memory is not None:
            kwargs["max_memory"] = dict(options.max_memory)
        if options.offload_folder is not None:
            kwargs["offload_folder"] = str(options.offload_folder)
    return kwargs


def load_component(class_name: str, folder: Path, options: LoadOptions) -> Any:
    """Load ``transformers.<class_name>`` from ``folder`` with the pipeline's load options.

    Models get ``torch_dtype`` (as transformers' ``dtype``), ``variant`` (when the folder has
    that variant), ``use_safetensors`` and ``device_map``; tokenizers and processors are read
    as they are. Nothing is downloaded: ``folder`` is local.
    """
    folder = Path(folder)
    klass = resolve_class(class_name, where=str(folder))
    if not folder.is_dir():
        raise LoadError(f"{folder}: the folder of the transformers.{class_name} component does not exist")
    import transformers

    kwargs: dict[str, Any] = {"local_files_only": True}
    if issubclass(klass, transformers.PreTrainedModel):
        kwargs.update(_model_kwargs(folder, options))
    try:
        return klass.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        raise LoadError(f"{folder}: transformers could not load {klass.__name__}: {exc}") from exc
