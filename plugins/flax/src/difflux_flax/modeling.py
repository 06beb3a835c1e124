"""Loading and saving Flax models in the Diffusers (PyTorch) folder layout.

A Flax model here is a :mod:`flax.linen` module whose submodules carry the PyTorch module
names (``"down_blocks.0"``, ``"to_out.0"`` ...), so the PyTorch state-dict key of a parameter is
its Flax path joined by dots, with the leaf renamed. :func:`torch_to_flax` walks the parameter
tree the module expects and converts each tensor:

==========================  ======================  ==============================
Flax leaf                   PyTorch name            layout change
==========================  ======================  ==============================
``kernel`` (4-D, conv)      ``weight``              OIHW -> HWIO
``kernel`` (2-D, dense)     ``weight``              (out, in) -> (in, out)
``scale`` (norms)           ``weight``              none
``embedding``               ``weight``              none
``bias``                    ``bias``                none
==========================  ======================  ==============================

:func:`flax_to_torch` is the inverse, so ``save_pretrained`` writes the same
``diffusion_pytorch_model.safetensors`` (or ``model.safetensors``) that the PyTorch side reads.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, cast

import jax
import jax.numpy as jnp
import numpy as np
from difflux.errors import LoadError
from flax import traverse_util

__all__ = [
    "FlaxModelMixin",
    "ParamsError",
    "check_dtype",
    "check_params",
    "flax_to_torch",
    "load_state_dict",
    "torch_to_flax",
]

logger = logging.getLogger("difflux")

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
_FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)


class ParamsError(LoadError, ValueError):
    """A params tree does not fit the model: missing, unexpected or mis-shaped leaves."""


def check_dtype(dtype: Any, where: str) -> Any:
    """``dtype`` as a ``jnp.dtype`` if it is a floating dtype JAX computes in.

    :raises TypeError: for anything else (``jnp.int32``, a string that is not a float dtype ...).
    """
    try:
        resolved = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(
            f"{where}: dtype={dtype!r} is not a dtype; pass jnp.float32, jnp.bfloat16 or jnp.float16"
        ) from None
    if resolved not in [jnp.dtype(d) for d in _FLOATS]:
        raise TypeError(
            f"{where}: dtype={resolved} is not a floating dtype; pass jnp.float32, jnp.bfloat16 or jnp.float16"
        )
    return resolved


def _torch_key(path: tuple[str, ...]) -> str:
    leaf = _LEAF_TO_TORCH.get(path[-1], path[-1])
    return ".".join((*path[:-1], leaf))


def _to_flax_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def _to_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray], expected: Mapping[str, Any], dtype: Any, where: str
) -> dict[str, Any]:
    """The Flax params for ``expected`` (a params tree of shapes, e.g. from :func:`jax.eval_shape`) from a
    PyTorch ``state_dict`` (numpy arrays), cast to ``dtype``.

    :raises ParamsError: naming the missing, unexpected and mis-shaped keys (and ``where``).
    """
    flat = traverse_util.flatten_dict(dict(expected))
    out: dict[tuple[str, ...], Any] = {}
    missing, bad = [], []
    used = set()
    for path, spec in flat.items():
        key = _torch_key(path)
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        value = _to_flax_layout(path[-1], np.asarray(state_dict[key]))
        if tuple(value.shape) != tuple(spec.shape):
            bad.append(f"{key}: checkpoint {tuple(state_dict[key].shape)}, model {tuple(_torch_shape(path, spec))}")
            continue
        out[path] = jnp.asarray(value, dtype=dtype)
    unexpected = sorted(set(state_dict) - used)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} ({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
    if unexpected:
        problems.append(
            f"unexpected {len(unexpected)} ({', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''})"
        )
    if bad:
        problems.append(f"mis-shaped {len(bad)} ({'; '.join(bad[:5])})")
    if problems:
        raise ParamsError(
            f"{where}: the weights do not fit the model config: {'; '.join(problems)}; "
            "check that config.json belongs to these weights"
        )
    params: dict[str, Any] = traverse_util.unflatten_dict(out)
    return params


def _torch_shape(path: tuple[str, ...], spec: Any) -> tuple[int, ...]:
    return tuple(_to_torch_layout(path[-1], np.empty(spec.shape, dtype=np.bool_)).shape)


def flax_to_torch(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """PyTorch state dict (numpy, contiguous) of a Flax params tree (the inverse of :func:`torch_to_flax`)."""
    out = {}
    for path, value in traverse_util.flatten_dict(dict(params)).items():
        array = np.asarray(jax.device_get(value))
        if array.dtype == jnp.bfloat16:
            array = array.astype(np.float32)  # numpy safetensors has no bfloat16: saved as float32
        out[_torch_key(path)] = np.ascontiguousarray(_to_torch_layout(path[-1], array))
    return out


def check_params(params: Any, expected: Mapping[str, Any], where: str) -> None:
    """Raise a clear :class:`ParamsError` unless ``params`` has exactly the structure and shapes of ``expected``,
    with floating leaves.

    :raises ParamsError: naming the first missing, unexpected or mis-shaped leaf path.
    """
    if not isinstance(params, Mapping):
        raise ParamsError(
            f"{where}: params must be a dict (the tree from from_pretrained), got {type(params).__name__}"
        )
    got = traverse_util.flatten_dict(dict(params))
    want = traverse_util.flatten_dict(dict(expected))
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        raise ParamsError(
            f"{where}: the params tree does not match the model: missing {['/'.join(p) for p in missing[:3]]}, "
            f"unexpected {['/'.join(p) for p in extra[:3]]}; pass the params returned with this model"
        )
    for path, spec in want.items():
        leaf = got[path]
        shape = getattr(leaf, "shape", None)
        if shape is None or tuple(shape) != tuple(spec.shape):
            raise ParamsError(
                f"{where}: params leaf {'/'.join(path)} has shape {shape}, the model expects {tuple(spec.shape)}"
            )
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise ParamsError(f"{where}: params leaf {'/'.join(path)} has dtype {leaf.dtype}; it must be floating")


def _weights_file(folder: Path, names: tuple[str, ...], variant: str | None) -> list[Path]:
    for name in names:
        stem, _, ext = name.rpartition(".")
        base = f"{stem}.{variant}.{ext}" if variant else name
        single = folder / base
        if single.is_file():
            return [single]
        index = folder / f"{base}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    raise OSError(
        f"no weights in {folder}: looked for {', '.join(names)}"
        + (f" with variant {variant!r}" if variant else "")
        + " (safetensors, or a sharded *.safetensors.index.json); .bin checkpoints are not read by difflux-flax"
    )


def load_state_dict(files: list[Path]) -> dict[str, np.ndarray]:
    """Every tensor of the safetensors ``files`` as numpy (float16 / bfloat16 kept; no torch needed)."""
    from safetensors import safe_open

    out: dict[str, np.ndarray] = {}
    for path in files:
        with safe_open(str(path), framework="flax") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                out[key] = np.asarray(f.get_tensor(key))
    return out


class HasDummyInputs(Protocol):
    """What every Flax model class provides: example inputs whose shapes ``init`` traces."""

    def dummy_inputs(self) -> tuple[Any, ...]: ...


class FlaxModelMixin:
    """Config and weights I/O of the Flax models (the subclass is a ``flax.linen.Module``).

    The config keys are the PyTorch model's (``config.json``); keys the Flax port does not use are
    reported once and kept when the pipeline saves the folder again. A subclass defines
    ``dummy_inputs() -> tuple`` (:class:`HasDummyInputs`): small example inputs for ``init`` /
    ``eval_shape``, of which only the shapes matter.
    """

    #: the Diffusers / transformers class name written as ``_class_name`` / ``architectures``
    torch_class_name: ClassVar[str] = ""
    config_name: ClassVar[str] = "config.json"
    weights_names: ClassVar[tuple[str, ...]] = ("diffusion_pytorch_model.safetensors",)
    #: config keys the Flax port reads but implements only one value of: key -> allowed values
    supported_values: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
    #: config keys that mean nothing to the Flax module (metadata, training-only switches)
    ignored_keys: ClassVar[frozenset[str]] = frozenset()

    # -- config -----------------------------------------------------------------------------

    @classmethod
    def _fields(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], dtype: Any = jnp.float32, **overrides: Any) -> Self:
        """Build the module from a PyTorch config dict (lists become tuples; metadata keys are dropped).

        ``attention_kernel=`` (an override, not a config key) names the Flax attention kernel of this model.

        :raises ValueError: when the config asks for a feature the Flax port does not implement.
        """
        kernel = overrides.pop("attention_kernel", None)
        merged = cls._check_config({**dict(config), **overrides})
        fields = cls._fields()
        fields -= {"dtype", "attention_kernel"}
        kwargs = {k: _hashable(v) for k, v in merged.items() if k in fields}
        unused = sorted(k for k in merged if k not in fields and not k.startswith("_") and k not in cls.ignored_keys)
        if unused:
            logger.info("difflux-flax: %s ignores config keys %s (kept when saving)", cls.__name__, ", ".join(unused))
        dtype = check_dtype(dtype, f"{cls.__name__}.from_config")
        return cls(**kwargs, dtype=dtype, attention_kernel=kernel)  # type: ignore[call-arg]

    @classmethod
    def _check_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The config the module is built from; a ``ValueError`` for values the Flax port does not implement."""
        for key, allowed in cls.supported_values.items():
            if key in config and config[key] not in allowed:
                raise ValueError(
                    f"{cls.__name__}: {key}={config[key]!r} is not supported by the Flax port (supported: "
                    f"{', '.join(map(repr, allowed))}); use the PyTorch {cls.torch_class_name}"
                )
        return config

    def config_dict(self) -> dict[str, Any]:
        """The module's config as written to ``config.json`` (PyTorch class name)."""
        out: dict[str, Any] = {"_class_name": self.torch_class_name}
        for name in sorted(self._fields() - {"dtype", "attention_kernel"}):
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    # -- params -----------------------------------------------------------------------------

    def init_weights(self, rng: jax.Array) -> dict[str, Any]:
        """Random params (Flax's default initialisers), the tree :meth:`from_pretrained` returns."""
        return dict(self.init(rng, *cast(HasDummyInputs, self).dummy_inputs())["params"])  # type: ignore[attr-defined]

    def params_shape(self) -> dict[str, Any]:
        """The params tree of ``jax.ShapeDtypeStruct`` leaves (no memory, no compute)."""
        inputs = cast(HasDummyInputs, self).dummy_inputs()
        shapes = jax.eval_shape(lambda: self.init(jax.random.key(0), *inputs))  # type: ignore[attr-defined]
        return dict(shapes["params"])

    def check_params(self, params: Any) -> None:
        """Raise :class:`ParamsError` unless ``params`` fits this module (structure, shapes, floating)."""
        check_params(params, self.params_shape(), type(self).__name__)

    def convert_state_dict(self, state_dict: Mapping[str, np.ndarray], where: str = "") -> dict[str, Any]:
        """Flax params from a PyTorch state dict (numpy arrays), in the module's dtype."""
        return torch_to_flax(state_dict, self.params_shape(), self.dtype, where or type(self).__name__)  # type: ignore[attr-defined]

    def torch_state_dict(self, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The PyTorch state dict (numpy) of ``params``, as ``save_pretrained`` writes it."""
        return flax_to_torch(params)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike[str],
        subfolder: str | None = None,
        dtype: Any = jnp.float32,
        variant: str | None = None,
        **overrides: Any,
    ) -> tuple[Self, dict[str, Any]]:
        """Load a PyTorch-layout model folder: returns ``(module, params)``, params in ``dtype``.

        :raises OSError: when ``config.json`` or the weights are missing.
        :raises ParamsError: when the weights do not fit the config.
        :raises TypeError: when ``dtype`` is not a floating dtype.
        """
        path = Path(folder) / (subfolder or "")
        config_file = path / cls.config_name
        if not config_file.is_file():
            raise OSError(f"{cls.__name__}.from_pretrained: no {cls.config_name} in {path}")
        config = json.loads(config_file.read_text())
        module = cls.from_config(config, dtype=dtype, **overrides)
        state = load_state_dict(_weights_file(path, cls.weights_names, variant))
        return module, module.convert_state_dict(state, where=f"{cls.__name__} from {path}")

    def save_pretrained(
        self, save_directory: str | os.PathLike[str], params: Mapping[str, Any], config: Mapping[str, Any] | None = None
    ) -> Path:
        """Write ``config.json`` and the PyTorch-layout safetensors of ``params`` into ``save_directory``.

        ``config`` (the dict the model was loaded from) keeps keys the Flax port does not use. The
        weights are written to a temporary file first and renamed, so a failure leaves no half file.

        :raises ParamsError: when ``params`` does not fit this module.
        """
        from safetensors.numpy import save_file

        self.check_params(params)
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        full = self.config_dict() if config is None else dict(config)
        state = self.torch_state_dict(params)
        weights = folder / self.weights_names[0]
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        try:
            save_file(state, str(tmp_path), metadata={"format": "pt"})
            os.replace(tmp_path, weights)
        finally:
            tmp_path.unlink(missing_ok=True)
        (folder / self.config_name).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        return folder


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value
