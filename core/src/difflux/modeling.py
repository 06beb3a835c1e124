"""The model base class: a ``torch.nn.Module`` that loads and saves Diffusers model folders.

A model folder holds ``config.json`` (the ``__init__`` arguments) and the weights, named and
sharded as :mod:`difflux.serialization` describes.

Loading with ``low_cpu_mem_usage=True`` (the default) builds the model with its parameters on
the meta device (its buffers are computed for real, so non-persistent buffers such as
precomputed frequencies come out right), then reads the weights one file at a time, casts each
tensor and assigns it in place of the meta parameter: the weights are never held twice.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self, overload

import torch

from ._pushing import PushToHubMixin
from .config import Bound, ConfigMixin
from .errors import ConfigError, LoadError, add_context
from .options import LoadOptions, check_bool
from .registry import get_registry
from .serialization import (
    DEFAULT_MAX_SHARD_SIZE,
    WEIGHTS_NAME,
    WeightFiles,
    atomic_folder,
    find_weight_files,
    iter_weight_shards,
    parse_size,
    save_state_dict,
)

__all__ = ["MODEL_CONFIG_BOUNDS", "LoadingInfo", "ModelMixin", "parameters_on_meta", "resolve_device"]

#: The backend name the ``difflux-attention-xformers`` plugin registers.
XFORMERS_BACKEND = "xformers"

logger = logging.getLogger("difflux")

#: What ``from_pretrained(..., output_loading_info=True)`` returns next to the model.
LoadingInfo = dict[str, list[Any]]

_MAX_LISTED = 20

# -- building on the meta device -----------------------------------------------------------

_local = threading.local()
_patch_lock = threading.Lock()
_patch_users = 0
_original_register_parameter = torch.nn.Module.register_parameter


def _register_parameter_on_meta(self: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
    _original_register_parameter(self, name, param)
    if param is None or not getattr(_local, "depth", 0) or param.device.type == "meta":
        return
    real = self._parameters[name]
    if real is None:
        raise RuntimeError("_register_parameter_on_meta: internal check failed: real is not None")
    meta = real.detach().to("meta")
    try:
        moved = type(real)(meta, requires_grad=real.requires_grad)
    except TypeError:  # a Parameter subclass with other constructor arguments
        moved = torch.nn.Parameter(meta, requires_grad=real.requires_grad)
    self._parameters[name] = moved


# The in-place initialisers of ``torch.nn.init``: on a meta tensor they compute nothing, but
# still cost a dispatch through torch's decompositions (a fifth of building a large UNet), so
# inside ``parameters_on_meta`` they return meta tensors untouched. Only torch's own functions are
# wrapped: one that someone else has put in their place is left as it is.
_INIT_NAMES = tuple(name for name in dir(torch.nn.init) if name.endswith("_") and not name.startswith("_"))
_torch_inits: dict[str, Callable[..., torch.Tensor]] = {name: getattr(torch.nn.init, name) for name in _INIT_NAMES}


def _skipping_on_meta(init: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(init)
    def wrapper(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if getattr(_local, "depth", 0) and isinstance(tensor, torch.Tensor) and tensor.device.type == "meta":
            return tensor
        return init(tensor, *args, **kwargs)

    return wrapper


_meta_inits = {name: _skipping_on_meta(fn) for name, fn in _torch_inits.items()}


def _patch_inits() -> None:
    for name, fn in _torch_inits.items():
        if getattr(torch.nn.init, name, None) is fn:
            setattr(torch.nn.init, name, _meta_inits[name])


def _unpatch_inits() -> None:
    for name, fn in _meta_inits.items():
        if getattr(torch.nn.init, name, None) is fn:
            setattr(torch.nn.init, name, _torch_inits[name])


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside the block (in this thread only), parameters move to the meta device as modules
    register them, and ``torch.nn.init``'s initialisers leave them alone (there is nothing to
    compute on a meta tensor); buffers stay real and are initialised as usual."""
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            torch.nn.Module.register_parameter = _register_parameter_on_meta  # type: ignore[method-assign]
            _patch_inits()
        _patch_users += 1
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                torch.nn.Module.register_parameter = _original_register_parameter  # type: ignore[method-assign]
                _unpatch_inits()


# -- devices and dtypes --------------------------------------------------------------------


def resolve_device(device_map: str | int | torch.device | Mapping[str, Any] | None) -> torch.device:
    """The one device a ``device_map`` names: ``"cpu"``, ``"cuda:0"``, ``{"": "cuda"}``, or ``"auto"``
    (the first available accelerator, else the CPU)."""
    value: Any = device_map
    if isinstance(value, Mapping):
        if set(value) != {""}:
            raise ConfigError(
                f"device_map={dict(value)!r}: only a whole-model map {{'': device}} is supported; "
                "per-module placement is not (use enable_model_cpu_offload on a pipeline instead)"
            )
        value = value[""]
    if value is None:
        return torch.device("cpu")
    if value == "auto":
        accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        return accelerator if accelerator is not None else torch.device("cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"device_map={device_map!r} does not name a device (use 'cpu', 'cuda', 'cuda:0' or 'auto')"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device_map={device_map!r}, but CUDA is not available in this process")
    return device


def _list_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" … and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def _shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(x) for x in shape)


class _Placement:
    """Where and in what dtype each tensor of the model goes."""

    def __init__(
        self, device: torch.device, dtype: torch.dtype | None, keep_fp32: tuple[str, ...], keep_file_dtype: bool
    ) -> None:
        self.device = device
        self.dtype = dtype
        self.keep_fp32 = keep_fp32
        self.keep_file_dtype = keep_file_dtype
        self.file_dtype: torch.dtype | None = None  # the first floating dtype seen in the files

    def in_fp32_module(self, key: str) -> bool:
        return any(f".{name}." in f".{key}." for name in self.keep_fp32)

    def dtype_for(self, key: str, model_dtype: torch.dtype, file_dtype: torch.dtype | None = None) -> torch.dtype:
        if not model_dtype.is_floating_point:
            return model_dtype
        if self.dtype is not None and self.in_fp32_module(key):
            return torch.float32
        if self.dtype is not None:
            return self.dtype
        if self.keep_file_dtype:
            chosen = file_dtype if file_dtype is not None and file_dtype.is_floating_point else self.file_dtype
            return chosen or model_dtype
        return model_dtype


def _dtype_kind(dtype: torch.dtype) -> str:
    """``"floating-point"``, ``"complex"`` or ``"integer"`` (booleans included): a tensor is
    cast within its kind on load, never across kinds."""
    if dtype.is_floating_point:
        return "floating-point"
    if dtype.is_complex:
        return "complex"
    return "integer"


def _owner(model: torch.nn.Module, key: str) -> tuple[torch.nn.Module, str]:
    path, _, name = key.rpartition(".")
    return (model.get_submodule(path) if path else model), name


def _get_tensor(model: torch.nn.Module, key: str) -> torch.Tensor:
    module, name = _owner(model, key)
    tensor = module._parameters[name] if name in module._parameters else module._buffers[name]
    if tensor is None:
        raise RuntimeError("_get_tensor: internal check failed: tensor is not None")
    return tensor


def _set_tensor(model: torch.nn.Module, key: str, tensor: torch.Tensor) -> None:
    module, name = _owner(model, key)
    if name in module._parameters:
        old = module._parameters[name]
        requires_grad = old.requires_grad if old is not None else True
        if not isinstance(tensor, torch.nn.Parameter):
            tensor = torch.nn.Parameter(tensor, requires_grad=requires_grad)
        module._parameters[name] = tensor
    else:
        module._buffers[name] = tensor


def _state_owners(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]] | None:
    """The module and attribute name behind each state-dict key, or ``None`` when some module
    customises loading (its own ``_load_from_state_dict`` or load hooks): then
    ``load_state_dict`` must do the assigning."""
    owners: dict[str, tuple[torch.nn.Module, str]] = {}
    plain = torch.nn.Module._load_from_state_dict
    stack: list[tuple[str, torch.nn.Module]] = [("", model)]
    while stack:
        prefix, module = stack.pop()
        if (
            type(module)._load_from_state_dict is not plain
            or module._load_state_dict_pre_hooks
            or module._load_state_dict_post_hooks
        ):
            return None
        for name, param in module._parameters.items():
            if param is not None:
                owners[prefix + name] = (module, name)
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                owners[prefix + name] = (module, name)
        stack.extend((f"{prefix}{name}.", child) for name, child in module._modules.items() if child is not None)
    return owners


def _assign(
    model: torch.nn.Module, tensors: dict[str, torch.Tensor], owners: dict[str, tuple[torch.nn.Module, str]] | None
) -> None:
    """``model.load_state_dict(tensors, strict=False, assign=True)`` without its per-module walk."""
    if owners is None or not all(key in owners for key in tensors):
        model.load_state_dict(tensors, strict=False, assign=True)
        return
    for key, tensor in tensors.items():
        module, name = owners[key]
        old = module._parameters.get(name)
        if old is not None:
            module._parameters[name] = torch.nn.Parameter(tensor, requires_grad=old.requires_grad)
        else:
            module._buffers[name] = tensor


def _alias_groups(model: torch.nn.Module) -> list[list[str]]:
    """Names that refer to one tensor object (tied weights), in registration order."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    for name, b in model.named_buffers(remove_duplicate=False):
        by_id.setdefault(id(b), []).append(name)
    return [names for names in by_id.values() if len(names) > 1]


# -- config value ranges -------------------------------------------------------------------

# Widths (channels, embedding sizes, heads, groups): a real model stays far below 2**16; a width in
# the billions would try to allocate that much. Per-block tuples have at most 64 blocks.
_WIDTH = Bound(ge=1, le=2**16, max_items=64)
_LAYERS = Bound(ge=1, le=1024, max_items=64)
_EMBEDDING_COUNT = Bound(ge=1, le=2**24)

#: The ranges :class:`ModelMixin` declares for the config keys Diffusers models share.
MODEL_CONFIG_BOUNDS: Mapping[str, Bound | None] = {
    **dict.fromkeys(
        (
            "in_channels",
            "out_channels",
            "block_out_channels",
            "latent_channels",
            "cross_attention_dim",
            "encoder_hid_dim",
            "caption_channels",
            "time_embedding_dim",
            "addition_time_embed_dim",
            "projection_class_embeddings_input_dim",
            "time_cond_proj_dim",
            "vq_embed_dim",
            "attention_head_dim",
            "num_attention_heads",
            "addition_embed_type_num_heads",
            "norm_num_groups",
            "attn_norm_num_groups",
        ),
        _WIDTH,
    ),
    "extra_in_channels": Bound(ge=0, le=2**16),
    **dict.fromkeys(("layers_per_block", "num_layers"), _LAYERS),
    **dict.fromkeys(
        ("transformer_layers_per_block", "reverse_transformer_layers_per_block"), Bound(ge=0, le=1024, max_items=64)
    ),
    **dict.fromkeys(("down_block_types", "up_block_types"), Bound(max_items=64)),
    **dict.fromkeys(
        ("num_class_embeds", "num_vq_embeddings", "num_embeds_ada_norm", "num_vector_embeds", "num_train_timesteps"),
        _EMBEDDING_COUNT,
    ),
    "sample_size": Bound(ge=1, le=2**16, max_items=4),
    "sample_rate": Bound(ge=1, le=10**7),
    "patch_size": Bound(ge=1, le=1024),
    **dict.fromkeys(("conv_in_kernel", "conv_out_kernel"), Bound(ge=1, le=63)),
    "downsample_padding": Bound(ge=0, le=63),
    "dropout": Bound(ge=0, le=1),
    "norm_eps": Bound(gt=0, le=1),
    "scaling_factor": Bound(gt=0),
    "latents_std": Bound(gt=0, max_items=2**16),
    **dict.fromkeys(("shift_factor", "mid_block_scale_factor", "resnet_out_scale_factor", "freq_shift"), Bound()),
    "latents_mean": Bound(max_items=2**16),
    "interpolation_scale": Bound(gt=0),
}


# -- the base class ------------------------------------------------------------------------


class ModelMixin(torch.nn.Module, ConfigMixin, PushToHubMixin):
    """Base of every difflux model: config recording plus Diffusers-format ``from_pretrained`` /
    ``save_pretrained``. Subclasses define ``__init__`` (its arguments are the config) and ``forward``.
    """

    config_name: ClassVar[str] = "config.json"
    #: File-name prefix of the weights (``diffusion_pytorch_model.safetensors``).
    weights_name: ClassVar[str] = WEIGHTS_NAME
    #: Submodule names kept in float32 when a lower ``torch_dtype`` is asked for.
    _keep_in_fp32_modules: ClassVar[tuple[str, ...]] = ()
    #: Submodules that must stay on one device when a model is split (offload helpers read this).
    _no_split_modules: ClassVar[tuple[str, ...]] = ()
    #: Regular expressions of checkpoint keys to drop silently instead of reporting as unexpected.
    _keys_to_ignore_on_load_unexpected: ClassVar[tuple[str, ...]] = ()
    #: Ranges of the Diffusers model config keys (sizes, counts, rates); see :class:`difflux.config.Bound`.
    #: Subclasses add their own keys or replace these in their own ``config_bounds``.
    config_bounds: ClassVar[Mapping[str, Bound | None]] = MODEL_CONFIG_BOUNDS

    @classmethod
    def _convert_checkpoint(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename legacy checkpoint keys; called on each weights file's tensors before loading."""
        return state_dict

    # -- loading ---------------------------------------------------------------------------

    @overload
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        variant: str | None = None,
        use_safetensors: bool | None = None,
        low_cpu_mem_usage: bool = True,
        device_map: str | torch.device | Mapping[str, Any] | None = None,
        output_loading_info: Literal[False] = False,
        options: LoadOptions | None = None,
        **kwargs: Any,
    ) -> Self: ...

    @overload
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        variant: str | None = None,
        use_safetensors: bool | None = None,
        low_cpu_mem_usage: bool = True,
        device_map: str | torch.device | Mapping[str, Any] | None = None,
        output_loading_info: Literal[True],
        options: LoadOptions | None = None,
        **kwargs: Any,
    ) -> tuple[Self, LoadingInfo]: ...

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        subfolder: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        variant: str | None = None,
        use_safetensors: bool | None = None,
        low_cpu_mem_usage: bool = True,
        device_map: str | torch.device | Mapping[str, Any] | None = None,
        output_loading_info: bool = False,
        options: LoadOptions | None = None,
        **kwargs: Any,
    ) -> Self | tuple[Self, LoadingInfo]:
        """Load a model from a Diffusers model folder (or a repo id, with ``difflux-hub`` installed).

        :param pretrained_model_name_or_path: a folder holding ``config.json`` and the weights, or a repo id.
        :param subfolder: the model's folder inside it (``"unet"``).
        :param torch_dtype: dtype of the floating-point weights (``torch.float16``, ``"bf16"``);
            ``_keep_in_fp32_modules`` stay in float32. ``None``: the dtype the model is built in.
        :param variant: load ``diffusion_pytorch_model.{variant}.safetensors`` (or its shards).
        :param use_safetensors: ``None``/``True``: safetensors only; ``False``: also allow ``.bin``.
        :param low_cpu_mem_usage: build on the meta device and assign the loaded tensors.
        :param device_map: ``"cpu"``, ``"cuda"``, ``"cuda:0"``, ``{"": device}`` or ``"auto"``;
            tensors are read straight onto that device.
        :param output_loading_info: return ``(model, info)`` with ``missing_keys``,
            ``unexpected_keys``, ``mismatched_keys`` and ``error_msgs`` instead of raising on
            them; missing and mis-shaped parameters are then initialised as a new model would be.
        :param options: a :class:`LoadOptions` (what the pipeline loader passes); the named
            arguments above, when not at their defaults, and option keywords override it.
        :param kwargs: :class:`LoadOptions` fields (``revision``, ``cache_dir`` …) go to the
            resolver; every other keyword overrides a config entry.

        Pipelines that already resolved a folder call :meth:`_from_folder` instead.
        """
        named: dict[str, Any] = {
            "subfolder": subfolder,
            "torch_dtype": torch_dtype,
            "variant": variant,
            "use_safetensors": use_safetensors,
            "low_cpu_mem_usage": low_cpu_mem_usage,
            "device_map": device_map,
            "output_loading_info": output_loading_info,
        }
        defaults = LoadOptions()
        changes = {k: v for k, v in named.items() if v is not getattr(defaults, k) and v != getattr(defaults, k)}
        option_names = LoadOptions.field_names()
        changes.update({k: v for k, v in kwargs.items() if k in option_names})
        overrides = {k: v for k, v in kwargs.items() if k not in option_names}
        opts = (options or defaults).replace(**changes) if changes else (options or defaults)
        registry = get_registry()
        root = registry.resolve_pretrained(pretrained_model_name_or_path, opts)
        folder = root / opts.subfolder if opts.subfolder else root
        loaded: Self | tuple[Self, LoadingInfo] = cls._from_folder(folder, opts, overrides=overrides)
        # A model loaded on its own goes through difflux_component_loaded with name="" (pipelines,
        # which call _from_folder, pass the component's name themselves).
        if isinstance(loaded, tuple):
            return (registry.component_loaded("", loaded[0], opts), loaded[1])
        return typing.cast(Self, registry.component_loaded("", loaded, opts))

    @classmethod
    def _from_folder(
        cls,
        folder: str | os.PathLike[str],
        options: LoadOptions,
        *,
        component: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Self | tuple[Self, LoadingInfo]:
        """Load from a local model folder with ready-made options (the pipeline loader's entry).

        ``folder`` is the model's own folder (``options.subfolder`` is not applied again);
        ``component`` picks the dtype from a per-component ``options.torch_dtype`` mapping;
        ``overrides`` replace config entries. Returns the model, or ``(model, info)`` when
        ``options.output_loading_info`` is set.
        """
        folder = Path(folder)
        config = cls.load_config(folder)
        config.update(overrides or {})
        from . import device_map as _device_map

        if _device_map.is_dispatch(options.device_map):  # per-module placement, maybe partly on disk
            dispatched, dispatch_info = _device_map.load_dispatched(cls, folder, options, config, component)
            ready = typing.cast(Self, dispatched)
            return (ready, dispatch_info) if options.output_loading_info else ready
        dtype = options.dtype_for(component)
        raw = options.torch_dtype
        if isinstance(raw, Mapping):
            raw = raw.get(component, raw.get("default")) if component else raw.get("default")
        placement = _Placement(
            resolve_device(options.device_map), dtype, tuple(cls._keep_in_fp32_modules), keep_file_dtype=raw == "auto"
        )
        weights = find_weight_files(
            folder, prefix=cls.weights_name, variant=options.variant, use_safetensors=options.use_safetensors
        )

        def build() -> ModelMixin:
            try:
                return cls.from_config(config)
            except ConfigError as exc:  # name the file the bad value came from
                add_context(exc, str(folder / cls.config_name))
                raise

        model: ModelMixin
        if options.low_cpu_mem_usage:
            with parameters_on_meta():
                model = build()
        else:
            model = build()
        info = model._load_weights(weights, placement, build, strict=not options.output_loading_info)
        model.eval()
        loaded = typing.cast(Self, model)
        return (loaded, info) if options.output_loading_info else loaded

    def _load_weights(
        self, weights: WeightFiles, placement: _Placement, build: Callable[[], torch.nn.Module], *, strict: bool
    ) -> LoadingInfo:
        """Read ``weights`` into this model, file by file; then place every tensor. Returns the loading info."""
        expected = self.state_dict(keep_vars=True)
        aliases = _alias_groups(self)
        ignore = [re.compile(p) for p in self._keys_to_ignore_on_load_unexpected]
        owners = _state_owners(self)
        loaded: set[str] = set()
        unexpected: list[tuple[str, Path]] = []
        mismatched: list[tuple[str, Path, tuple[int, ...], tuple[int, ...]]] = []
        wrong_kind: list[str] = []
        for path, tensors in iter_weight_shards(weights, placement.device):
            tensors = type(self)._convert_checkpoint(tensors)
            batch: dict[str, torch.Tensor] = {}
            for key in list(tensors):
                tensor = tensors.pop(key)
                ref = expected.get(key)
                if ref is None:
                    if not any(p.search(key) for p in ignore):
                        unexpected.append((key, path))
                    continue
                if tensor.shape != ref.shape:
                    mismatched.append((key, path, _shape(tensor.shape), _shape(ref.shape)))
                    continue
                if _dtype_kind(tensor.dtype) != _dtype_kind(ref.dtype):
                    wrong_kind.append(
                        f"{path}: key {key!r} is stored as {tensor.dtype} ({_dtype_kind(tensor.dtype)}), but "
                        f"{type(self).__name__} holds {_dtype_kind(ref.dtype)} values there ({ref.dtype}); "
                        "refusing to reinterpret it: the file is corrupt or belongs to another model"
                    )
                    mismatched.append((key, path, _shape(tensor.shape), _shape(ref.shape)))
                    continue
                if placement.file_dtype is None and tensor.is_floating_point():
                    placement.file_dtype = tensor.dtype
                batch[key] = tensor.to(dtype=placement.dtype_for(key, ref.dtype, tensor.dtype))
            _assign(self, batch, owners)
            loaded.update(batch)
            del batch, tensors
        covered = set(loaded)
        for group in aliases:
            if covered.intersection(group):
                covered.update(group)
        missing = [k for k in expected if k not in covered]
        mismatched_keys = {m[0] for m in mismatched}
        missing_only = [k for k in missing if k not in mismatched_keys]
        errors = self._loading_errors(weights, missing_only, unexpected, [m for m in mismatched if m[2] != m[3]])
        errors += wrong_kind
        if errors and strict:
            raise LoadError("\n".join(errors))
        on_meta = [k for k in missing if _get_tensor(self, k).device.type == "meta"]
        if on_meta:
            self._fill_from_new_model(on_meta, build)
        for group in aliases:  # re-tie: assign=True gave each alias its own tensor
            source = next((k for k in group if k in loaded), group[0])
            tensor = _get_tensor(self, source)
            for key in group:
                if key != source:
                    _set_tensor(self, key, tensor)
        self._place(placement, loaded)
        return {
            "missing_keys": missing_only,
            "unexpected_keys": [k for k, _ in unexpected],
            "mismatched_keys": [(k, found, want) for k, _, found, want in mismatched],
            "error_msgs": errors,
        }

    def _loading_errors(
        self,
        weights: WeightFiles,
        missing: list[str],
        unexpected: list[tuple[str, Path]],
        mismatched: list[tuple[str, Path, tuple[int, ...], tuple[int, ...]]],
    ) -> list[str]:
        name = type(self).__name__
        errors: list[str] = []
        if missing:
            errors.append(
                f"{weights.describe()}: missing {len(missing)} key(s) that {name} needs: {_list_keys(missing)}; "
                "pass output_loading_info=True to load anyway with those initialised at random"
            )
        if unexpected:
            by_file: dict[Path, list[str]] = {}
            for key, path in unexpected:
                by_file.setdefault(path, []).append(key)
            for path, keys in by_file.items():
                errors.append(f"{path}: {len(keys)} key(s) that {name} does not have: {_list_keys(keys)}")
        for key, path, found, want in mismatched:
            errors.append(f"{path}: key {key!r} has shape {found}, but {name} expects {want}")
        return errors

    def _fill_from_new_model(self, keys: list[str], build: Callable[[], torch.nn.Module]) -> None:
        """Give keys the checkpoint did not provide the values a freshly built model has."""
        fresh = build().state_dict()
        for key in keys:
            _set_tensor(self, key, fresh[key].detach().clone())

    def _place(self, placement: _Placement, loaded: set[str]) -> None:
        """Move every tensor that did not come from the files to the target device and dtype."""
        done: dict[int, torch.Tensor] = {}
        for prefix, module in self.named_modules(remove_duplicate=False):
            for table in (module._parameters, module._buffers):
                for name, tensor in list(table.items()):
                    if tensor is None:
                        continue
                    key = f"{prefix}.{name}" if prefix else name
                    if key in loaded:
                        continue
                    if id(tensor) in done:
                        table[name] = done[id(tensor)]
                        continue
                    if tensor.device.type == "meta":
                        raise LoadError(f"{type(self).__name__}: {key} was neither loaded nor initialised")
                    dtype = placement.dtype_for(key, tensor.dtype)
                    if tensor.device == placement.device and tensor.dtype == dtype:
                        continue
                    moved = tensor.detach().to(device=placement.device, dtype=dtype)
                    if isinstance(tensor, torch.nn.Parameter):
                        moved = torch.nn.Parameter(moved, requires_grad=tensor.requires_grad)
                    done[id(tensor)] = moved
                    table[name] = moved

    # -- saving ----------------------------------------------------------------------------

    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        *,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
        is_main_process: bool = True,
    ) -> Path:
        """Write ``config.json`` and the weights into ``save_directory``, all at once.

        :param safe_serialization: safetensors (default) or, when ``False``, pickled ``.bin`` files.
        :param variant: name the weights ``diffusion_pytorch_model.{variant}.safetensors``.
        :param max_shard_size: split the weights into shards of at most this size (``"10GB"``, bytes),
            with an index file, when they do not fit in one.
        :param is_main_process: only the main process writes (in distributed runs).

        The folder is written into a temporary sibling and swapped in when complete; other files
        already in it are kept, stale weights of the same variant and format are removed.
        """
        where = f"{type(self).__name__}.save_pretrained"
        check_bool("safe_serialization", safe_serialization, where=where)
        check_bool("is_main_process", is_main_process, where=where)
        target = Path(save_directory)
        if not is_main_process:
            return target
        parse_size(max_shard_size)
        state = self.state_dict()
        on_meta = [k for k, v in state.items() if v.device.type == "meta"]
        if on_meta:
            raise LoadError(f"{type(self).__name__}: cannot save tensors on the meta device: {_list_keys(on_meta)}")
        with atomic_folder(target) as tmp:
            self.save_config(tmp)
            save_state_dict(
                state,
                tmp,
                prefix=self.weights_name,
                variant=variant,
                safe_serialization=safe_serialization,
                max_shard_size=max_shard_size,
            )
        return target

    # -- properties and switches -----------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first floating-point parameter outside ``_keep_in_fp32_modules``."""
        keep = tuple(self._keep_in_fp32_modules)
        first: torch.dtype | None = None
        for name, p in self.named_parameters():
            if p.is_floating_point():
                if not any(f".{m}." in f".{name}." for m in keep):
                    return p.dtype
                first = first or p.dtype
        if first is not None:
            return first
        for t in (*self.parameters(), *self.buffers()):
            return t.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        """The device of the first parameter (or buffer); CPU for a model without tensors."""
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")

    def optimize(
        self, mode: str = "default", *, skip: Iterable[str] = (), only: Iterable[str] | None = None, **options: Any
    ) -> Any:
        """Apply the registered fast-path optimisations to this model, in place.

        The same as ``DiffusionPipeline.optimize`` for one model (see ``docs/optimize.md``).

        :raises ConfigError: unknown mode or optimisation name.
        :return: a :class:`difflux.optimize.OptimizeReport`.
        """
        from .optimize import optimize_model

        return optimize_model(self, mode, skip=skip, only=only, **options)

    def enable_group_offload(
        self,
        onload_device: str | torch.device,
        offload_device: str | torch.device = "cpu",
        offload_type: str = "block_level",
        num_blocks_per_group: int | None = None,
        use_stream: bool = True,
        pin_memory: bool | None = None,
    ) -> None:
        """Keep this model's weights on the CPU and move groups of layers to ``onload_device`` as they
        run (:func:`difflux.offload.apply_group_offload`; see ``docs/memory.md``): blocks of
        ``num_blocks_per_group`` per ``ModuleList`` (``"block_level"``) or single leaves
        (``"leaf_level"``), the next group prefetched on a side stream when ``use_stream`` and the
        device has streams. Enabling again replaces the hooks; :meth:`disable_group_offload` removes them.

        :raises ConfigError: a bad ``offload_type``/``num_blocks_per_group`` or an ``offload_device``
            other than the CPU.
        """
        from . import offload

        if torch.device(offload_device).type != "cpu":
            raise ConfigError(f"offload_device={offload_device}: group offload keeps weights on the CPU; pass 'cpu'")
        self.disable_group_offload()
        self.__dict__["_difflux_group_offload"] = offload.apply_group_offload(
            self,
            torch.device(onload_device),
            offload_type=offload_type,  # type: ignore[arg-type]
            num_blocks_per_group=num_blocks_per_group,
            use_stream=use_stream,
            pin_memory=pin_memory,
        )

    def disable_group_offload(self) -> None:
        """Remove group-offload hooks: the model whole, with real weights, on the CPU."""
        from accelerate.hooks import remove_hook_from_module

        run = self.__dict__.pop("_difflux_group_offload", None)
        if run is not None:
            run.free()
            remove_hook_from_module(self, recurse=True)

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Number of parameter elements (tied parameters counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    def set_attention_backend(self, name: str | None, **options: Any) -> None:
        """Use attention backend ``name`` in every attention module of this model (``None``: automatic).

        The name must be registered by a plugin; the error lists the registered names.
        ``options`` are passed to the backend's kernel on every call (an
        :class:`~difflux.attention.AttentionBackendChoice` is stored).

        :raises ConfigError: unknown name, or a backend not usable in this process (with why).
        """
        if options and name is not None:
            from .attention import AttentionBackendChoice

            name = AttentionBackendChoice(name, **options)
        if name is not None:
            backends = get_registry().attention_backends
            spec = backends.get(name)
            if spec is None:
                raise ConfigError(
                    f"unknown attention backend {name!r}; registered backends: {', '.join(sorted(backends)) or 'none'}"
                )
            why = spec.available()
            if why is not None:
                raise ConfigError(f"attention backend {name!r} (plugin {spec.plugin!r}) is not usable here: {why}")
        for module in self.modules():
            if "attention_backend" in vars(module) or hasattr(type(module), "attention_backend"):
                setattr(module, "attention_backend", name)  # noqa: B010 (a plain attribute, not a tensor)

    def _attention_modules(self) -> Iterator[Any]:
        return (m for m in self.modules() if "attention_backend" in vars(m) or hasattr(type(m), "attention_backend"))

    def _fewest_attention_heads(self) -> int | None:
        heads = [m.heads for m in self._attention_modules() if isinstance(getattr(m, "heads", None), int)]
        return min(heads, default=None)

    def _reset_attention_backend(self, name: str) -> None:
        for module in self._attention_modules():
            if module.attention_backend == name:
                module.attention_backend = None

    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        """Compute attention a few heads at a time, through the ``sliced`` backend.

        :param slice_size: ``"auto"`` (half of each layer's heads), ``"max"`` (one head at a time:
            least memory), or heads per slice (at most the fewest heads of any layer); ``None``
            turns slicing off. Outputs equal unsliced attention (float32: within 1e-5); peak
            memory of the attention scores falls by about ``batch * heads / slice``.
        :raises ValueError: a bad ``slice_size``, before anything runs.

        Each slice runs on the automatically chosen backend; see ``docs/attention.md``.
        """
        if slice_size is None:
            self.disable_attention_slicing()
            return
        from .sliced_attention import SLICED_BACKEND, check_slice_size

        size = check_slice_size(slice_size, self._fewest_attention_heads(), where=f"{type(self).__name__} slice_size")
        self.set_attention_backend(SLICED_BACKEND, slice_size=size)

    def set_attention_slice(self, slice_size: str | int | None) -> None:
        """Diffusers' model-level name for :meth:`enable_attention_slicing` (``None``: off)."""
        self.enable_attention_slicing(slice_size)

    def disable_attention_slicing(self) -> None:
        """Modules using the ``sliced`` backend go back to automatic selection; others are left alone."""
        self._reset_attention_backend("sliced")

    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        """Use xFormers' ``memory_efficient_attention`` in every attention module.

        Needs the ``difflux-attention-xformers`` plugin with its extra
        (``pip install "difflux-attention-xformers[xformers]"``) and a CUDA device.

        :param attention_op: an xFormers operator (e.g. ``MemoryEfficientAttentionFlashAttentionOp``)
            passed through as ``op=``; ``None`` lets xFormers choose.
        :raises ConfigError: the plugin is not installed, or xFormers / CUDA is missing (says which).
        """
        if XFORMERS_BACKEND not in get_registry().attention_backends:
            raise ConfigError(
                "enable_xformers_memory_efficient_attention needs the attention backend 'xformers', which no "
                'installed plugin provides: pip install "difflux-attention-xformers[xformers]"'
            )
        self.set_attention_backend(XFORMERS_BACKEND, attention_op=attention_op)

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Modules using the ``xformers`` backend go back to automatic selection."""
        self._reset_attention_backend(XFORMERS_BACKEND)
