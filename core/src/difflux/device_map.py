"""Device maps: models split across devices, CPU and disk; pipelines spread over devices by size.

Model level (``ModelMixin.from_pretrained(..., device_map=...)``): ``"auto"`` (also
``"balanced"``, ``"balanced_low_0"``, ``"sequential"``) plans a per-module map with
:func:`accelerate.infer_auto_device_map` under ``max_memory``; a dict ``{"module.path": device}``
is taken as given. Modules sent to ``"disk"`` keep ``meta`` parameters; their weights stay in the
safetensors file (memory-mapped; weights that had to be converted are written to
``offload_folder`` as safetensors) and are read on use through :func:`accelerate.dispatch_model`'s
offload hooks. So a model larger than the RAM budget loads and runs.

Pipeline level (``DiffusionPipeline.from_pretrained(..., device_map="balanced", max_memory=...)``):
whole components are placed by size (read from the safetensors headers, in the dtype they load
in): the largest first, each on the accelerator with the most room left, else on the CPU, else
(a difflux model, with ``offload_folder``) on disk. ``pipe.hf_device_map`` records the result;
components away from the main device get an ``accelerate`` hook that moves their inputs over
and their outputs back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .errors import ConfigError, LoadError
from .serialization import parse_size

if TYPE_CHECKING:
    from .modeling import LoadingInfo, ModelMixin
    from .options import LoadOptions

__all__ = [
    "MODEL_STRATEGIES",
    "PIPELINE_STRATEGIES",
    "is_dispatch",
    "load_dispatched",
    "main_device",
    "plan_components",
    "reset",
]

logger = logging.getLogger("difflux")

#: ``device_map`` strings a model plans per module.
MODEL_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
#: ``device_map`` strings a pipeline plans per component.
PIPELINE_STRATEGIES = ("balanced",)


# -- model level ---------------------------------------------------------------------------------


def is_dispatch(device_map: Any) -> bool:
    """Whether ``device_map`` asks for a per-module plan (not one device for the whole model)."""
    if isinstance(device_map, str):
        return device_map in MODEL_STRATEGIES
    if isinstance(device_map, Mapping):
        return set(device_map) != {""} or any(_is_disk(v) for v in device_map.values())
    return False


def _is_disk(value: Any) -> bool:
    return isinstance(value, str) and value == "disk"


def _normalise(value: Any, where: str) -> int | str:
    """A device-map value as accelerate takes it: an int (CUDA index), ``"cpu"``, ``"disk"``, ``"xpu:0"``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, torch.device):
        value = str(value)
    if isinstance(value, str):
        if value in ("cpu", "disk", "meta"):
            if value == "meta":
                raise ConfigError(f"{where}: 'meta' holds no weights; use 'cpu', an accelerator or 'disk'")
            return value
        try:
            device = torch.device(value)
        except (RuntimeError, TypeError):
            pass
        else:
            return str(device) if device.index is not None else f"{device.type}:0"
    raise ConfigError(f"{where}: {value!r} is not a device (use an int index, 'cuda:1', 'cpu' or 'disk')")


def _max_memory(max_memory: Mapping[Any, Any] | None) -> dict[int | str, int]:
    from accelerate.utils import get_max_memory

    if max_memory is None:
        return dict(get_max_memory())
    out: dict[int | str, int] = {}
    for key, size in max_memory.items():
        try:
            out[key] = parse_size(size) if isinstance(size, str) else int(size)
        except (ConfigError, ValueError, TypeError):
            raise ConfigError(f"max_memory[{key!r}] = {size!r} is not a size (use bytes or '10GiB', '500MB')") from None
    return out


def _device_for(key: str, device_map: Mapping[str, int | str]) -> int | str:
    """The device of the longest ``device_map`` prefix of ``key``; tensors no entry covers (top-level
    buffers) go to the main device."""
    best, found = -1, None
    for prefix, device in device_map.items():
        if (prefix == "" or key == prefix or key.startswith(prefix + ".")) and len(prefix) > best:
            best, found = len(prefix), device
    if found is None:
        main = main_device_of(device_map)
        return main.index if main.type == "cuda" and main.index is not None else str(main)
    return found


def _expand(model: torch.nn.Module, plan: dict[str, int | str]) -> dict[str, int | str]:
    """Split every entry that has more specific entries under it into its children (accelerate wants
    disjoint entries: ``{"": "cpu", "blocks.3": "disk"}`` becomes ``{"inp": "cpu", ..., "blocks.3": "disk"}``)."""
    while True:
        outer = next(
            (k for k in plan if any(o != k and (k == "" or o.startswith(k + ".")) for o in plan)), None
        )
        if outer is None:
            return plan
        device = plan.pop(outer)
        module = model.get_submodule(outer) if outer else model
        prefix = f"{outer}." if outer else ""
        names = [n for n, _ in module.named_children()]
        names += [n for n, t in (*module._parameters.items(), *module._buffers.items()) if t is not None]
        for name in names:
            plan.setdefault(prefix + name, device)


def plan_model(
    model: torch.nn.Module, cls: type[ModelMixin], options: LoadOptions, dtype: torch.dtype | None
) -> dict[str, int | str]:
    """The per-module device map of a model built on ``meta`` (``options.device_map`` planned or checked)."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    value = options.device_map
    if isinstance(value, Mapping):
        plan = {str(k): _normalise(v, f"device_map[{k!r}]") for k, v in value.items()}
        names = {n for n, _ in model.named_modules()}
        unknown = sorted(k for k in plan if k and k not in names)
        if unknown:
            raise ConfigError(
                f"device_map names {', '.join(unknown)}, which {type(model).__name__} has no module called; "
                "keys are module paths such as 'down_blocks.0' (or '' for the whole model)"
            )
        uncovered = [
            n for n, _ in model.named_parameters()
            if not any(p == "" or n == p or n.startswith(p + ".") for p in plan)
        ]
        if uncovered:
            raise ConfigError(
                f"device_map places no module holding the parameters {', '.join(uncovered[:5])}"
                f"{' ...' if len(uncovered) > 5 else ''}; add their modules (or '') to the map"
            )
        plan = _expand(model, plan)
        for key in model.state_dict(keep_vars=True):  # buffers no entry covers: on the main device
            if not any(p == "" or key == p or key.startswith(p + ".") for p in plan):
                plan[key] = _device_for(key, plan)
        return plan
    if not isinstance(value, str):
        raise RuntimeError("plan_model: internal check failed: isinstance(value, str)")
    budget = _max_memory(options.max_memory)
    no_split = list(cls._no_split_modules)
    if value != "sequential":
        budget = get_balanced_memory(
            model, max_memory=budget, no_split_module_classes=no_split, dtype=dtype, low_zero=value == "balanced_low_0"
        )
    return dict(infer_auto_device_map(model, max_memory=budget, no_split_module_classes=no_split, dtype=dtype))


def _file_keys(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    from safetensors import safe_open

    out: dict[str, tuple[tuple[int, ...], str]] = {}
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        for key in fh.keys():  # noqa: SIM118
            piece = fh.get_slice(key)
            out[key] = (tuple(piece.get_shape()), str(piece.get_dtype()))
    return out


def load_dispatched(
    cls: type[ModelMixin], folder: Path, options: LoadOptions, config: dict[str, Any], component: str | None
) -> tuple[ModelMixin, LoadingInfo]:
    """Build ``cls`` on ``meta``, plan its device map, load every weight not sent to disk onto its
    device, index the disk ones, and dispatch with accelerate's hooks. Returns ``(model, info)``."""
    from accelerate import dispatch_model
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .modeling import _get_tensor, _set_tensor, parameters_on_meta
    from .serialization import find_weight_files, load_weights_file

    dtype = options.dtype_for(component)
    weights = find_weight_files(
        folder, prefix=cls.weights_name, variant=options.variant, use_safetensors=options.use_safetensors
    )
    raw = options.torch_dtype
    if isinstance(raw, Mapping):
        raw = raw.get(component, raw.get("default")) if component else raw.get("default")
    if raw == "auto" and weights.files[0].suffix == ".safetensors":  # the checkpoint's own floating dtype
        kinds = [kind for _, kind in _file_keys(weights.files[0]).values() if kind.upper() in _FLOATS]
        floats = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
        dtype = floats.get(kinds[0].upper()) if kinds else None
    with parameters_on_meta():
        model = cls.from_config(config)
    keep = tuple(cls._keep_in_fp32_modules)
    if dtype is not None:
        for name, tensor in model.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                target = torch.float32 if any(f".{m}." in f".{name}." for m in keep) else dtype
                _set_tensor(model, name, tensor.detach().to(target))
    plan = plan_model(model, cls, options, dtype)
    disk = any(_is_disk(v) for v in plan.values())
    folder_out = Path(options.offload_folder) if options.offload_folder is not None else None
    per_tensor = options.offload_state_dict if options.offload_state_dict is not None else (
        disk or options.max_memory is not None
    )
    expected = model.state_dict(keep_vars=True)
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    index: dict[str, dict[str, Any]] = {}
    loaded: set[str] = set()
    unexpected: list[tuple[str, Path]] = []
    mismatched: list[tuple[str, Path, tuple[int, ...], tuple[int, ...]]] = []
    written = 0
    for path in weights.files:
        header = _file_keys(path) if path.suffix == ".safetensors" else None
        as_is = False
        if header is not None:
            probe = {k: torch.empty(shape, device="meta") for k, (shape, _) in header.items()}
            converted = cls._convert_checkpoint(dict(probe))
            as_is = set(converted) == set(header) and all(converted[k].shape == probe[k].shape for k in header)
        memory: dict[str, torch.Tensor] = {}
        if not as_is or not per_tensor:
            memory = cls._convert_checkpoint(load_weights_file(path, "cpu"))
        keys = list(header) if as_is and header is not None else list(memory)
        to_write: dict[str, torch.Tensor] = {}
        handle = safe_open(str(path), framework="pt", device="cpu") if as_is and per_tensor else None
        for key in keys:
            ref = expected.get(key)
            if ref is None:
                if not any(__import__("re").search(p, key) for p in cls._keys_to_ignore_on_load_unexpected):
                    unexpected.append((key, path))
                continue
            shape = header[key][0] if as_is and header is not None else tuple(memory[key].shape)
            if tuple(shape) != tuple(ref.shape):
                mismatched.append((key, path, tuple(shape), tuple(ref.shape)))
                continue
            device = _device_for(key, plan)
            if device == "disk" and key in params:
                if as_is:
                    index[key] = {"safetensors_file": str(path), "weight_name": key, "dtype": str(ref.dtype)[6:]}
                else:
                    to_write[key] = memory.pop(key).to(ref.dtype)
                loaded.add(key)
                continue
            tensor = handle.get_tensor(key) if handle is not None else memory.pop(key)
            tensor = tensor.to(_torch_device(device))
            _set_tensor(model, key, tensor.to(ref.dtype) if ref.is_floating_point() else tensor)
            loaded.add(key)
        if to_write:
            if folder_out is None:
                raise ConfigError(
                    f"{path}: device_map sends weights to 'disk' that must be converted first; pass offload_folder="
                )
            folder_out.mkdir(parents=True, exist_ok=True)
            target_file = folder_out / f"{cls.weights_name}-offload-{written:05d}.safetensors"
            written += 1
            save_file({k: v.contiguous() for k, v in to_write.items()}, str(target_file))
            for key in to_write:
                index[key] = {"safetensors_file": str(target_file), "weight_name": key}
        del memory, to_write
    missing = [k for k in expected if k not in loaded]
    errors = model._loading_errors(weights, missing, unexpected, mismatched)
    if errors and not options.output_loading_info:
        raise LoadError("\n".join(errors))
    still_meta = [k for k in missing if _get_tensor(model, k).device.type == "meta"]
    if still_meta:
        fresh = cls.from_config(config).state_dict()
        for key in still_meta:
            _set_tensor(model, key, fresh[key].detach().clone().to(expected[key].dtype))
    # buffers and tensors not in the files go where their module runs
    for key, tensor in model.state_dict(keep_vars=True).items():
        where = _torch_device(_device_for(key, plan))
        if tensor.device.type != "meta" and tensor.device != where:
            _set_tensor(model, key, tensor.detach().to(where))
    if disk and folder_out is None:
        raise ConfigError(
            f"{folder}: device_map {plan!r} sends weights to 'disk'; pass offload_folder= (a folder for "
            "weights that must be rewritten; the rest stay memory-mapped in the checkpoint)"
        )
    dispatch_model(model, device_map=plan, offload_index=index or None, offload_dir=folder_out, offload_buffers=False)
    model.eval()
    info: LoadingInfo = {
        "missing_keys": [k for k in missing if k not in {m[0] for m in mismatched}],
        "unexpected_keys": [k for k, _ in unexpected],
        "mismatched_keys": [(k, found, want) for k, _, found, want in mismatched],
        "error_msgs": errors,
    }
    return model, info


# -- pipeline level ------------------------------------------------------------------------------


_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATS = ("F64", "F32", "F16", "BF16")


def _component_bytes(folder: Path, options: LoadOptions, name: str) -> int:
    """Bytes of a component's weights in the dtype they will load in (0 for a folder without weights),
    read from the safetensors headers of the variant's files (or the default files)."""
    if not folder.is_dir():
        return 0
    dtype = options.dtype_for(name)
    files = sorted(folder.glob("*.safetensors"))
    variant = options.variant
    chosen = [f for f in files if variant is not None and f".{variant}." in f.name]
    if not chosen:
        chosen = [f for f in files if len(f.name.split(".")) == 2]
    total = 0
    for path in chosen:
        for shape, kind in _file_keys(path).values():
            numel = 1
            for d in shape:
                numel *= d
            size = _ITEM_BYTES.get(kind.upper(), 1)
            if dtype is not None and kind.upper() in _FLOATS:
                size = dtype.itemsize
            total += numel * size
    return total


def plan_components(
    folder: Path, names: list[str], disk_ok: set[str], options: LoadOptions
) -> dict[str, int | str]:
    """Place whole components (``device_map="balanced"``): ``{name: device index | "cpu" | "disk"}``."""
    if options.device_map not in PIPELINE_STRATEGIES:
        raise ConfigError(
            f"device_map={options.device_map!r} for a pipeline: use 'balanced' (whole components placed by "
            f"size over the devices in max_memory); per-module maps are for a single model's from_pretrained"
        )
    budget = _max_memory(options.max_memory)
    accelerators = [k for k in budget if k not in ("cpu", "disk")]
    room: dict[int | str, int] = {k: budget[k] for k in (*accelerators, "cpu") if k in budget}
    sizes = {name: _component_bytes(folder / name, options, name) for name in names}
    plan: dict[str, int | str] = {}
    for name in sorted((n for n in names if sizes[n] > 0), key=lambda n: -sizes[n]):
        size = sizes[name]
        fits = [d for d in accelerators if room[d] >= size]
        if fits:
            device: int | str = max(fits, key=lambda d: room[d])
        elif "cpu" in room and room["cpu"] >= size:
            device = "cpu"
        elif name in disk_ok and options.offload_folder is not None:
            device = "disk"
        else:
            where = ", ".join(f"{k}: {v} bytes left" for k, v in room.items()) or "no device"
            hint = " or pass offload_folder= to let it go to disk" if name in disk_ok else ""
            raise ConfigError(
                f"device_map='balanced': component {name!r} needs {size} bytes, which fits nowhere under "
                f"max_memory ({where}); raise max_memory{hint}"
            )
        if device != "disk":
            room[device] -= size
        plan[name] = device
    return plan


def _torch_device(device: int | str) -> torch.device:
    if isinstance(device, int):
        accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        return torch.device(accelerator.type if accelerator is not None else "cuda", device)
    return torch.device("cpu") if device == "disk" else torch.device(device)


def plan_pipeline(
    folder: Path, index: Mapping[str, Any], names: list[str], registry: Any, options: LoadOptions
) -> dict[str, int | str]:
    """The component plan for ``device_map="balanced"`` (``{}`` for any other ``device_map``)."""
    from .modeling import ModelMixin

    if not isinstance(options.device_map, str) or options.device_map in ("cpu", "auto") or ":" in options.device_map:
        return {}
    try:
        torch.device(options.device_map)
    except (RuntimeError, TypeError):
        pass
    else:
        return {}
    disk_ok: set[str] = set()
    loadable: list[str] = []
    for name in names:
        entry = index.get(name)
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(v, str) for v in entry)):
            continue
        loadable.append(name)
        klass = registry.component_class(entry[0], entry[1])
        if isinstance(klass, type) and issubclass(klass, ModelMixin):
            disk_ok.add(name)
    return plan_components(folder, loadable, disk_ok, options)


def options_for(options: LoadOptions, plan: Mapping[str, int | str], name: str) -> LoadOptions:
    """The load options of one component under a pipeline plan (unchanged without a plan)."""
    if not plan:
        return options
    device = plan.get(name)
    if device is None:  # no weights: tokenizers, schedulers, processors
        return options.replace(device_map=None, max_memory=None, offload_folder=None)
    if device == "disk":
        if options.offload_folder is None:
            raise RuntimeError("options_for: internal check failed: options.offload_folder is not None")
        folder = Path(options.offload_folder) / name
        return options.replace(device_map={"": "disk"}, max_memory=None, offload_folder=folder)
    return options.replace(device_map={"": str(_torch_device(device))}, max_memory=None, offload_folder=None)


def finish_pipeline(pipe: Any, plan: Mapping[str, int | str]) -> None:
    """Record ``pipe.hf_device_map`` and hook components away from the main device (inputs in, outputs back)."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    if not plan:
        return
    main = main_device_of(plan)
    for name, device in plan.items():
        module = pipe.components.get(name)
        where = _torch_device(device)
        if isinstance(module, torch.nn.Module) and device != "disk" and where != main:
            add_hook_to_module(module, AlignDevicesHook(execution_device=where, io_same_device=True), append=True)
    pipe.__dict__["hf_device_map"] = dict(plan)


def main_device_of(plan: Mapping[str, int | str]) -> torch.device:
    for device in plan.values():
        if device not in ("cpu", "disk"):
            return _torch_device(device)
    return torch.device("cpu")


def main_device(pipe: Any) -> torch.device | None:
    """The device a pipeline placed by ``device_map`` runs on, or ``None`` without a map."""
    plan = getattr(pipe, "__dict__", {}).get("hf_device_map")
    return main_device_of(plan) if plan else None


def refuse_move(pipe: Any, device: torch.device) -> None:
    raise ConfigError(
        f"{type(pipe).__name__} was placed by device_map ({pipe.__dict__.get('hf_device_map')}); "
        f".to({str(device)!r}) would undo that placement: call pipe.reset_device_map() first, then .to()"
    )


def _materialise(module: torch.nn.Module) -> None:
    """Bring disk- or CPU-offloaded weights (``meta`` parameters behind accelerate hooks) back into place."""
    from accelerate.hooks import AlignDevicesHook, SequentialHook
    from accelerate.utils import set_module_tensor_to_device

    for sub in module.modules():
        hook = getattr(sub, "_hf_hook", None)
        hooks = hook.hooks if isinstance(hook, SequentialHook) else (hook,)
        for h in hooks:
            if isinstance(h, AlignDevicesHook) and h.offload and h.weights_map is not None:
                for name, tensor in list(sub.named_parameters(recurse=h.place_submodules)):
                    if tensor.device.type == "meta":
                        set_module_tensor_to_device(sub, name, "cpu", value=h.weights_map[name])
                h.offload = False


def reset(pipe: Any) -> None:
    """Undo a pipeline-level (or component-level) device map: weights back from disk, hooks off, on the CPU."""
    from accelerate.hooks import remove_hook_from_module

    for _, module in pipe._torch_modules():
        if getattr(module, "hf_device_map", None) is not None or getattr(module, "_hf_hook", None) is not None:
            _materialise(module)
            remove_hook_from_module(module, recurse=True)
            module.__dict__.pop("hf_device_map", None)
        module.to("cpu")
    pipe.__dict__.pop("hf_device_map", None)


