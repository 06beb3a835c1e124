"""``FlaxDiffusionPipeline``: load and save a Diffusers (PyTorch) folder as Flax modules plus a params tree.

``from_pretrained(path, dtype=...)`` returns ``(pipeline, params)``: the pipeline holds the Flax
modules, tokenizer and scheduler (no weights); ``params`` maps each component name to its params
tree (the scheduler to its :class:`~difflux_flax.schedulers.FlaxSchedulerState`). The classes come
from the difflux registry: the folder's ``model_index.json`` names ``StableDiffusionPipeline``,
``UNet2DConditionModel`` ...; the Flax class is the registered ``Flax`` + that name. PyTorch
safetensors convert on load; ``save_pretrained(path, params)`` writes the same layout back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import jax
import jax.numpy as jnp
import numpy as np
from difflux.errors import LoadError
from difflux.image import numpy_to_pil

from .modeling import FlaxModelMixin, check_dtype
from .schedulers import FlaxScheduler

__all__ = ["FlaxDiffusionPipeline", "replicate", "shard"]

logger = logging.getLogger("difflux")

#: components of a Diffusers folder that have no Flax port; they load as ``None`` (with a log line)
UNPORTED_OPTIONAL = frozenset({"safety_checker", "feature_extractor", "image_encoder"})


def replicate(tree: Any, devices: int | None = None) -> Any:
    """``tree`` with a leading axis of one copy per local device (the ``params`` of ``jit=True``)."""
    n = devices or jax.local_device_count()
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(jnp.asarray(x), (n, *jnp.shape(x))), tree)


def shard(array: Any, devices: int | None = None) -> Any:
    """Split the batch axis of ``array`` over the local devices: ``(B, ...)`` -> ``(devices, B / devices, ...)``.

    :raises ValueError: if ``B`` is not a multiple of the device count.
    """
    n = devices or jax.local_device_count()
    array = np.asarray(array)
    if array.shape[0] % n:
        raise ValueError(f"shard: a batch of {array.shape[0]} does not split over {n} devices; use a multiple of {n}")
    return array.reshape(n, array.shape[0] // n, *array.shape[1:])


def _flax_name(name: str) -> str:
    return name if name.startswith("Flax") else f"Flax{name}"


class FlaxDiffusionPipeline:
    """Base of the Flax pipelines: component I/O in the Diffusers layout, progress bar, ``numpy_to_pil``.

    Subclasses list their components as ``__init__`` arguments (Diffusers' names). Attribute
    ``__difflux_pipeline__`` tells the difflux registry that this is a pipeline class.
    """

    __difflux_pipeline__: ClassVar[bool] = True
    config_name: ClassVar[str] = "model_index.json"
    _optional_components: ClassVar[tuple[str, ...]] = ("safety_checker", "feature_extractor", "image_encoder")

    dtype: Any = jnp.float32

    def __init__(self, **components: Any) -> None:
        self._components: dict[str, Any] = dict(components)
        self._library: dict[str, tuple[str | None, str | None]] = {}
        self._configs: dict[str, dict[str, Any]] = {}
        self._progress_bar_config: dict[str, Any] = {}
        for name, value in components.items():
            setattr(self, name, value)

    @property
    def components(self) -> dict[str, Any]:
        """Every component by its ``model_index.json`` name (``None`` for an absent optional one)."""
        return dict(self._components)

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        dtype: Any = jnp.float32,
        variant: str | None = None,
        **overrides: Any,
    ) -> tuple[Self, dict[str, Any]]:
        """Load a Diffusers folder (or a repo id, with difflux-hub): returns ``(pipeline, params)``.

        :param dtype: the compute and params dtype of every model (``jnp.float32``, ``jnp.bfloat16``,
            ``jnp.float16``).
        :param variant: read ``*.{variant}.safetensors`` (e.g. ``"fp16"``); values are cast to ``dtype``.
        :param overrides: a component by name: ``(module, params)`` for a model, a Flax scheduler (or
            ``(scheduler, state)``), a tokenizer, or ``None`` for an optional one.
        :raises LoadError: when ``model_index.json`` is missing, names a class with no Flax port, or a
            component folder is missing.
        :raises TypeError: when ``dtype`` is not a floating dtype.
        """
        from difflux.options import LoadOptions
        from difflux.registry import get_registry

        dtype = check_dtype(dtype, f"{cls.__name__}.from_pretrained")
        registry = get_registry()
        folder = registry.resolve_pretrained(pretrained_model_name_or_path, LoadOptions(variant=variant))
        index_file = folder / cls.config_name
        if not index_file.is_file():
            raise LoadError(f"{cls.__name__}.from_pretrained: no {cls.config_name} in {folder}")
        index = json.loads(index_file.read_text())
        pipe_cls: type[FlaxDiffusionPipeline] = cls
        if cls is FlaxDiffusionPipeline:
            name = _flax_name(str(index.get("_class_name", "")))
            pipe_cls = registry.pipeline_class(name, where=str(index_file))
        components: dict[str, Any] = {}
        params: dict[str, Any] = {}
        library: dict[str, tuple[str | None, str | None]] = {}
        configs: dict[str, dict[str, Any]] = {}
        for name, entry in index.items():
            if name.startswith("_") or not isinstance(entry, list) or len(entry) != 2:
                continue
            lib, class_name = entry
            library[name] = (lib, class_name)
            if name in overrides:
                components[name], state = _override(name, overrides.pop(name))
                if state is not None:
                    params[name] = state
                continue
            if lib is None or class_name is None:
                components[name] = None
                continue
            if name in UNPORTED_OPTIONAL:
                logger.info("difflux-flax: %s (%s) has no Flax port; it is not loaded", name, class_name)
                components[name] = None
                continue
            sub = folder / name
            if not sub.is_dir():
                raise LoadError(f"{pipe_cls.__name__}.from_pretrained: {folder} has no folder {name!r} ({class_name})")
            components[name], state = _load_component(registry, name, lib, class_name, sub, dtype, variant)
            if state is not None:
                params[name] = state
            config_file = sub / ("scheduler_config.json" if name == "scheduler" else "config.json")
            if config_file.is_file():
                configs[name] = json.loads(config_file.read_text())
        if overrides:
            raise TypeError(f"{pipe_cls.__name__}.from_pretrained: unknown components {sorted(overrides)}")
        pipe: Self = pipe_cls(**components, dtype=dtype)  # type: ignore[assignment]
        pipe._library = library
        pipe._configs = configs
        return pipe, params

    # -- saving -------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike[str], params: Mapping[str, Any]) -> Path:
        """Write the Diffusers layout (``model_index.json``, one folder per component, PyTorch safetensors).

        Everything is written to a temporary folder next to ``save_directory`` and moved in at the end,
        so a failure leaves nothing half-written.

        :raises ParamsError: when a model's params do not fit it.
        """
        target = Path(save_directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        index: dict[str, Any] = {
            "_class_name": type(self).__name__.removeprefix("Flax"),
            "_diffusers_version": "0.42.1",
        }
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for name, component in self._components.items():
                index[name] = self._save_component(name, component, params, tmp)
            (tmp / self.config_name).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
            target.mkdir(exist_ok=True)
            for entry in tmp.iterdir():
                dest = target / entry.name
                if dest.is_dir():
                    shutil.rmtree(dest)
                os.replace(entry, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _save_component(self, name: str, component: Any, params: Mapping[str, Any], folder: Path) -> list[Any]:
        if component is None:
            return [None, None]
        lib, class_name = self._library.get(name, (None, None))
        if isinstance(component, FlaxModelMixin):
            if name not in params:
                raise KeyError(f"{type(self).__name__}.save_pretrained: params has no {name!r} entry")
            component.save_pretrained(folder / name, params[name], config=self._configs.get(name))
            library = lib or ("transformers" if component.torch_class_name.startswith("CLIP") else "diffusers")
            return [library, class_name or component.torch_class_name]
        if isinstance(component, FlaxScheduler):
            component.save_pretrained(folder / name)
            return ["diffusers", component.torch_scheduler.rpartition(":")[2]]
        if hasattr(component, "save_pretrained"):  # a tokenizer
            component.save_pretrained(str(folder / name))
            return [lib or "transformers", class_name or type(component).__name__]
        raise TypeError(f"{type(self).__name__}.save_pretrained: cannot save component {name!r} ({component!r})")

    # -- utilities ----------------------------------------------------------------------------

    numpy_to_pil = staticmethod(numpy_to_pil)

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Keyword arguments for the ``tqdm`` bar of the denoising loop (``disable=True`` hides it)."""
        self._progress_bar_config = dict(kwargs)

    def progress_bar(self, iterable: Iterable[Any] | None = None, total: int | None = None) -> Any:
        """A ``tqdm`` bar over ``iterable`` or for ``total`` steps, with the configured options.

        :raises ValueError: when neither is given.
        """
        from tqdm.auto import tqdm

        if iterable is not None:
            return tqdm(iterable, **self._progress_bar_config)
        if total is not None:
            return tqdm(total=total, **self._progress_bar_config)
        raise ValueError("progress_bar() needs iterable= or total=")


def _override(name: str, value: Any) -> tuple[Any, Any]:
    """``(component, params or state)`` of a keyword override."""
    if isinstance(value, tuple) and len(value) == 2:
        component, state = value
        if isinstance(component, (FlaxModelMixin, FlaxScheduler)):
            return component, state
    if isinstance(value, FlaxScheduler):
        return value, value.create_state()
    if isinstance(value, FlaxModelMixin):
        raise TypeError(f"override {name}=: pass (module, params) for a Flax model, not the module alone")
    return value, None


def _load_component(
    registry: Any, name: str, library: str, class_name: str, folder: Path, dtype: Any, variant: str | None
) -> tuple[Any, Any]:
    """``(component, params or state or None)`` of one component folder."""
    if library == "transformers" and "Tokenizer" in class_name:
        import transformers

        return getattr(transformers, class_name).from_pretrained(str(folder)), None
    flax_name = _flax_name(class_name)
    if flax_name in registry.schedulers:
        scheduler_cls = registry.scheduler_class(flax_name)
        scheduler, state = scheduler_cls.from_pretrained(folder)
        return scheduler, state
    model_cls = registry.component_class(library, flax_name)
    if model_cls is None:
        flax_schedulers = sorted(n for n in registry.schedulers if n.startswith("Flax"))
        raise LoadError(
            f"{name}: {library}.{class_name} has no Flax port ({flax_name} is not registered); Flax classes: "
            f"{', '.join(flax_schedulers)} and the models of difflux-flax; replace it with {name}=..."
        )
    module, params = model_cls.from_pretrained(folder, dtype=dtype, variant=variant)
    return module, params
