"""Keeping models off the accelerator until they run: model, sequential and group offload.

Three strategies ship with core, registered through the ``difflux_register_offload_strategies``
hook by core's own plugin, like any third-party strategy:

``"model"``
    Each model component is moved to the execution device when its ``forward`` runs; the model
    that ran before it goes back to the CPU (one model on the device at a time). The CPU copy of
    the weights is kept (pinned when the device is CUDA-like), so offloading costs no copy back.
``"sequential"``
    :func:`accelerate.cpu_offload`: weights live on the CPU (the modules hold ``meta`` tensors)
    and each leaf module's weights are copied over only while it runs.
``"group"``
    Blocks of ``num_blocks_per_group`` layers (``offload_type="block_level"``) or single leaf
    modules (``"leaf_level"``) move together; with ``use_stream=True`` on an accelerator with
    streams, the next group is copied on a side stream from pinned memory while the current one
    runs (prefetch, in the order recorded during the first forward).

Every strategy works through :mod:`accelerate.hooks` (``ModelHook`` / ``add_hook_to_module``);
the weights are swapped by replacing the ``Parameter`` / buffer objects in their modules and
putting the originals back on offload, so tied weights stay tied and no copy goes back to the
CPU. A strategy is any callable ``strategy(models, plan) -> Offloaded`` (see
:class:`OffloadStrategy`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

import torch

from .errors import ConfigError

if TYPE_CHECKING:
    from accelerate.hooks import ModelHook

__all__ = [
    "BUILTIN_STRATEGIES",
    "OffloadPlan",
    "OffloadStrategy",
    "Offloaded",
    "apply_group_offload",
    "execution_device",
    "group_offload",
    "model_offload",
    "runs_forward_hooks",
    "sequential_offload",
]

logger = logging.getLogger("difflux")

#: The strategies core's own plugin registers (as ``"difflux.offload:<name>_offload"``).
BUILTIN_STRATEGIES = ("model", "sequential", "group")


# -- the contract a strategy implements ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OffloadPlan:
    """What a pipeline (or model) asks of an offload strategy.

    :param execution_device: where the models run (``cuda:0``, ``xpu:0``, ``mps``; ``cpu`` or
        ``meta`` in tests).
    :param sequence: the model components in the order the pipeline runs them
        (``model_cpu_offload_seq``); components not named come after, in component order.
    :param exclude: components kept whole on the execution device (``_exclude_from_cpu_offload``).
    :param options: the strategy's own keyword options (``num_blocks_per_group`` ...).
    """

    execution_device: torch.device
    sequence: tuple[str, ...] = ()
    exclude: frozenset[str] = frozenset()
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Offloaded(Protocol):
    """What a strategy returns: a handle on the hooks it installed."""

    def free(self) -> None:
        """Put every offloaded weight back in its offload place; the hooks stay armed."""

    def remove(self) -> None:
        """Remove the hooks and leave every model whole, with real weights, on the CPU."""


class OffloadStrategy(Protocol):
    """``strategy(models, plan) -> Offloaded``: install hooks on ``models`` (``{name: module}``)."""

    def __call__(self, models: Mapping[str, torch.nn.Module], plan: OffloadPlan) -> Offloaded: ...


# -- devices -------------------------------------------------------------------------------


def execution_device(gpu_id: int | None = None, device: str | torch.device = "cuda") -> torch.device:
    """The device ``enable_*_offload(gpu_id, device)`` runs on: ``device`` with index ``gpu_id``.

    ``device`` is any torch device name (``"cuda"``, ``"xpu"``, ``"mps"``, ``"cuda:1"``; ``"cpu"``
    and ``"meta"`` exercise the hooks without an accelerator). Raises :class:`ConfigError` when
    ``gpu_id`` and an index in ``device`` disagree or the device type is not available here.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"device={device!r} is not a torch device name (use 'cuda', 'xpu', 'mps', 'cuda:1')"
        ) from None
    if gpu_id is not None and dev.index is not None and dev.index != gpu_id:
        raise ConfigError(f"device={device!r} names index {dev.index}, but gpu_id={gpu_id}; pass only one of them")
    if dev.type in ("cpu", "meta"):
        return torch.device(dev.type)
    module = getattr(torch, dev.type, None)
    available = getattr(module, "is_available", None)
    if not callable(available) or not available():
        raise ConfigError(
            f"offload to {dev.type!r} was asked for, but no {dev.type} device is available in this process; "
            "pass device= one of the accelerators torch sees (torch.accelerator.current_accelerator()), "
            "or keep the pipeline on the CPU without offload"
        )
    index = gpu_id if gpu_id is not None else (dev.index if dev.index is not None else 0)
    return torch.device(dev.type, index) if dev.type != "mps" else torch.device("mps")


def _device_module(device: torch.device) -> Any | None:
    """``torch.cuda`` / ``torch.xpu`` ... when ``device`` has streams, else ``None``."""
    if device.type in ("cpu", "meta", "mps"):
        return None
    module = getattr(torch, device.type, None)
    return module if module is not None and hasattr(module, "Stream") and hasattr(module, "stream") else None


def _can_pin(device: torch.device) -> bool:
    return device.type in ("cuda", "xpu") and torch.accelerator.is_available()


# -- swapping weights in and out -----------------------------------------------------------


class _Slot:
    """Every place one tensor object is registered: ``[(module, name)]`` and whether a parameter."""

    __slots__ = ("home", "is_param", "places")

    def __init__(self, home: torch.Tensor, is_param: bool) -> None:
        self.home = home
        self.is_param = is_param
        self.places: list[tuple[torch.nn.Module, str]] = []


def _collect_slots(modules: Sequence[torch.nn.Module], recurse: bool = True) -> list[_Slot]:
    """The parameters and buffers of ``modules`` (each tensor object once, with all its places)."""
    slots: dict[int, _Slot] = {}
    for root in modules:
        for module in root.modules() if recurse else (root,):
            for table, is_param in ((module._parameters, True), (module._buffers, False)):
                for name, tensor in table.items():
                    if tensor is None:
                        continue
                    slot = slots.get(id(tensor))
                    if slot is None:
                        slot = slots[id(tensor)] = _Slot(tensor, is_param)
                    if (module, name) not in [(m, n) for m, n in slot.places]:
                        slot.places.append((module, name))
    return list(slots.values())


def _set(slot: _Slot, tensor: torch.Tensor) -> None:
    for module, name in slot.places:
        if slot.is_param:
            module._parameters[name] = tensor  # type: ignore[assignment]
        else:
            module._buffers[name] = tensor


class _Weights:
    """The weights of a set of modules, kept on the offload device and copied to a device on demand.

    Onloading registers new tensors (new ``Parameter`` objects, ``requires_grad=False``) on the
    device in place of the originals; offloading puts the original objects back, so nothing is
    copied back and tied weights stay tied.
    """

    def __init__(self, slots: list[_Slot], *, pin: bool) -> None:
        self.slots = slots
        self.on: torch.device | None = None
        self.pinned = False
        self._event: Any = None
        if pin:
            self.pin()

    @property
    def nbytes(self) -> int:
        return sum(s.home.numel() * s.home.element_size() for s in self.slots)

    def pin(self) -> None:
        """Copy the CPU weights into page-locked memory (fast, asynchronous transfers)."""
        if self.pinned:
            return
        for slot in self.slots:
            home = slot.home
            if home.device.type != "cpu" or home.is_pinned():
                continue
            pinned = home.detach().pin_memory()
            new = torch.nn.Parameter(pinned, requires_grad=home.requires_grad) if slot.is_param else pinned
            slot.home = new
            _set(slot, new)
        self.pinned = True

    def onload(self, device: torch.device, stream: Any = None) -> None:
        """Register copies on ``device`` (issued on ``stream`` when given; :meth:`wait` before use)."""
        if self.on == device:
            return
        module = _device_module(device) if stream is not None else None
        context = module.stream(stream) if module is not None else contextlib.nullcontext()
        non_blocking = self.pinned and device.type != "cpu"
        with context:
            for slot in self.slots:
                moved = slot.home.detach().to(device, non_blocking=non_blocking)
                _set(slot, torch.nn.Parameter(moved, requires_grad=False) if slot.is_param else moved)
            if module is not None:
                self._event = module.Event()
                self._event.record(stream)
        self.on = device

    def wait(self) -> None:
        """Make the current stream wait for an asynchronous onload, and tell the allocator."""
        if self._event is None or self.on is None:
            return
        module = _device_module(self.on)
        if module is None:
            raise RuntimeError("_Weights.wait: internal check failed: module is not None")
        current = module.current_stream(self.on)
        current.wait_event(self._event)
        self._event = None
        for slot in self.slots:
            module_, name = slot.places[0]
            tensor = module_._parameters[name] if slot.is_param else module_._buffers[name]
            if tensor is not None:
                tensor.record_stream(current)

    def offload(self) -> None:
        """Put the original (offload-device) tensors back; the device copies are freed."""
        if self.on is None:
            return
        self._event = None
        for slot in self.slots:
            _set(slot, slot.home)
        self.on = None


def _send(value: Any, device: torch.device) -> Any:
    from accelerate.utils import send_to_device

    return send_to_device(value, device)


def _add_hook(module: torch.nn.Module, hook: ModelHook) -> None:
    from accelerate.hooks import add_hook_to_module

    add_hook_to_module(module, hook, append=True)


def _remove_hooks(module: torch.nn.Module) -> None:
    from accelerate.hooks import remove_hook_from_module

    remove_hook_from_module(module, recurse=True)


def _hook_base() -> type[ModelHook]:
    from accelerate.hooks import ModelHook

    base: type[ModelHook] = ModelHook
    return base


F = TypeVar("F", bound=Callable[..., Any])


def runs_forward_hooks(method: F) -> F:
    """Decorate a model method other than ``forward`` (``encode``, ``decode``) that pipelines call
    directly, so that offload hooks run around it as around ``forward``.

    Calls nested in a hooked call (``forward`` calling ``decode``) run no second time.
    """

    @functools.wraps(method)
    def wrapper(self: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        hook = getattr(self, "_hf_hook", None)
        if hook is None or self.__dict__.get("_difflux_in_hook", False):
            return method(self, *args, **kwargs)
        args, kwargs = hook.pre_forward(self, *args, **kwargs)
        self.__dict__["_difflux_in_hook"] = True
        try:
            output = method(self, *args, **kwargs)
        finally:
            self.__dict__["_difflux_in_hook"] = False
        return hook.post_forward(self, output)

    return wrapper  # type: ignore[return-value]


def _ordered(models: Mapping[str, torch.nn.Module], plan: OffloadPlan) -> list[tuple[str, torch.nn.Module]]:
    names = [n for n in plan.sequence if n in models] + [n for n in models if n not in plan.sequence]
    return [(n, models[n]) for n in names]


def _keep_excluded(models: Mapping[str, torch.nn.Module], plan: OffloadPlan) -> dict[str, torch.nn.Module]:
    """Move excluded components to the execution device; return the others."""
    kept: dict[str, torch.nn.Module] = {}
    for name, module in models.items():
        if name in plan.exclude:
            if plan.execution_device.type != "meta":
                module.to(plan.execution_device)
        else:
            kept[name] = module
    return kept


def _check_options(strategy: str, options: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"offload strategy {strategy!r} takes no option(s) {', '.join(unknown)}; "
            f"it takes: {', '.join(allowed) or 'none'}"
        )


# -- "model": one whole model on the device at a time ----------------------------------------


class _ModelOffloaded:
    """Handle of the ``"model"`` strategy: one model on the execution device at a time."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.weights: dict[str, _Weights] = {}
        self.modules: dict[str, torch.nn.Module] = {}
        self.running: set[str] = set()

    def activate(self, name: str) -> None:
        for other, weights in self.weights.items():
            if other != name and weights.on is not None and other not in self.running:
                weights.offload()
        self.weights[name].onload(self.device)

    def free(self) -> None:
        for weights in self.weights.values():
            weights.offload()

    def remove(self) -> None:
        self.free()
        for module in self.modules.values():
            _remove_hooks(module)
        self.weights.clear()
        self.modules.clear()


def _model_hook(handle: _ModelOffloaded, name: str) -> ModelHook:
    class ModelOffloadHook(_hook_base()):  # type: ignore[misc]
        """Onload ``name`` (offloading whichever model ran before) and move its inputs over."""

        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            handle.activate(name)
            handle.running.add(name)
            return _send(args, handle.device), _send(kwargs, handle.device)

        def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
            handle.running.discard(name)
            return output

    return ModelOffloadHook()


def model_offload(models: Mapping[str, torch.nn.Module], plan: OffloadPlan) -> Offloaded:
    """The ``"model"`` strategy: whole models move to ``plan.execution_device`` when they run.

    Options: ``pin_memory`` (default: on for CUDA/XPU) keeps the CPU weights page-locked.
    """
    _check_options("model", plan.options, ("pin_memory",))
    pin = bool(plan.options.get("pin_memory", _can_pin(plan.execution_device)))
    handle = _ModelOffloaded(plan.execution_device)
    for name, module in _ordered(_keep_excluded(models, plan), plan):
        module.to("cpu")
        handle.weights[name] = _Weights(_collect_slots([module]), pin=pin)
        handle.modules[name] = module
        _add_hook(module, _model_hook(handle, name))
    return handle


# -- "sequential": accelerate's cpu_offload, leaf by leaf -----------------------------------------


class _SequentialOffloaded:
    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.modules = modules

    def free(self) -> None:
        """Nothing stays on the device between leaf calls."""

    def remove(self) -> None:
        for module in self.modules.values():
            _remove_hooks(module)  # accelerate puts the CPU weights back in place of the meta tensors
            module.to("cpu")
        self.modules.clear()


def sequential_offload(models: Mapping[str, torch.nn.Module], plan: OffloadPlan) -> Offloaded:
    """The ``"sequential"`` strategy: :func:`accelerate.cpu_offload` on each model (leaf modules
    copied to ``plan.execution_device`` only while they run). Options: ``offload_buffers``."""
    from accelerate import cpu_offload

    _check_options("sequential", plan.options, ("offload_buffers",))
    handle = _SequentialOffloaded({})
    for name, module in _ordered(_keep_excluded(models, plan), plan):
        module.to("cpu")
        buffers = bool(plan.options.get("offload_buffers", len(module._parameters) > 0))
        cpu_offload(module, execution_device=plan.execution_device, offload_buffers=buffers)
        handle.modules[name] = module
    return handle


# -- "group": blocks of layers, prefetched on a side stream ---------------------------------------


GroupType = Literal["block_level", "leaf_level"]


class _Group:
    def __init__(self, name: str, weights: _Weights) -> None:
        self.name = name
        self.weights = weights
        self.next: _Group | None = None


class _GroupRun:
    """The groups of one model and the order they ran in (recorded on the first forward)."""

    def __init__(self, onload: torch.device, stream: Any) -> None:
        self.onload_device = onload
        self.stream = stream
        self.groups: list[_Group] = []
        self.order: list[_Group] = []
        self.recorded = False

    def onload(self, group: _Group) -> None:
        if not self.recorded and group not in self.order:
            self.order.append(group)
        if group.weights.on is None:
            group.weights.onload(self.onload_device)
        group.weights.wait()
        if self.stream is not None and self.recorded and group.next is not None:
            group.next.weights.onload(self.onload_device, self.stream)

    def finish_recording(self) -> None:
        if self.recorded:
            return
        self.recorded = True
        for first, second in zip(self.order, self.order[1:], strict=False):
            first.next = second

    def free(self) -> None:
        for group in self.groups:
            group.weights.offload()


class _GroupOffloaded:
    def __init__(self) -> None:
        self.runs: dict[str, tuple[torch.nn.Module, _GroupRun]] = {}

    def free(self) -> None:
        for _, run in self.runs.values():
            run.free()

    def remove(self) -> None:
        self.free()
        for module, _ in self.runs.values():
            _remove_hooks(module)
        self.runs.clear()


def _group_hook(run: _GroupRun, group: _Group, *, onload: bool, offload: bool, top: bool) -> ModelHook:
    class GroupOffloadHook(_hook_base()):  # type: ignore[misc]
        """Onload a group before its first module runs; offload it after its last one."""

        def pre_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if onload or group.weights.on is None:
                run.onload(group)
            if top:
                return _send(args, run.onload_device), _send(kwargs, run.onload_device)
            return args, kwargs

        def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
            if offload:
                group.weights.offload()
            if top:
                run.finish_recording()
                run.free()  # a prefetched group this forward did not use
            return output

    return GroupOffloadHook()


def _block_groups(
    root: torch.nn.Module, per_group: int
) -> tuple[list[list[torch.nn.Module]], list[torch.nn.Module]]:
    """Chunks of consecutive blocks from every ``ModuleList``/``Sequential`` (the outermost ones), and
    the modules outside them (whose own tensors form the model's top-level group)."""
    chunks: list[list[torch.nn.Module]] = []
    rest: list[torch.nn.Module] = [root]

    def visit(module: torch.nn.Module) -> None:
        for child in module.children():
            if isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)) and len(child) > 0:
                blocks = list(child)
                chunks.extend(blocks[i : i + per_group] for i in range(0, len(blocks), per_group))
            elif any(isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) for m in child.modules()):
                rest.append(child)
                visit(child)
            else:
                rest.append(child)
                rest.extend(child.modules())

    visit(root)
    return chunks, rest


def apply_group_offload(
    module: torch.nn.Module,
    onload_device: torch.device,
    *,
    offload_type: GroupType = "block_level",
    num_blocks_per_group: int | None = None,
    use_stream: bool = True,
    pin_memory: bool | None = None,
) -> _GroupRun:
    """Install group-offload hooks on one model; returns its run record (groups and order)."""
    if offload_type not in ("block_level", "leaf_level"):
        raise ConfigError(f"offload_type={offload_type!r}: use 'block_level' or 'leaf_level'")
    per_group = 1 if num_blocks_per_group is None else num_blocks_per_group
    if not isinstance(per_group, int) or per_group < 1:
        raise ConfigError(f"num_blocks_per_group={num_blocks_per_group!r}: expected a positive int")
    device_module = _device_module(onload_device)
    stream = device_module.Stream(onload_device) if use_stream and device_module is not None else None
    pin = _can_pin(onload_device) if pin_memory is None else pin_memory
    module.to("cpu")
    run = _GroupRun(onload_device, stream)
    if offload_type == "block_level":
        chunks, rest = _block_groups(module, per_group)
    else:
        leaves = [m for m in module.modules() if not list(m.children()) and m is not module]
        leaves = [m for m in leaves if any(True for _ in m.parameters(recurse=False))
                  or any(True for _ in m.buffers(recurse=False))]
        chunks = [[leaf] for leaf in leaves]
        rest = [m for m in module.modules() if m not in set(leaves)]
    for i, chunk in enumerate(chunks):
        group = _Group(f"group{i}", _Weights(_collect_slots(chunk), pin=pin))
        run.groups.append(group)
        for j, block in enumerate(chunk):
            _add_hook(block, _group_hook(run, group, onload=j == 0, offload=j == len(chunk) - 1, top=False))
    top = _Group("top", _Weights(_collect_slots(rest, recurse=False), pin=pin))
    run.groups.append(top)
    _add_hook(module, _group_hook(run, top, onload=True, offload=True, top=True))
    return run


def group_offload(models: Mapping[str, torch.nn.Module], plan: OffloadPlan) -> Offloaded:
    """The ``"group"`` strategy: :func:`apply_group_offload` on every model.

    Options: ``offload_type`` (``"block_level"`` | ``"leaf_level"``), ``num_blocks_per_group``,
    ``use_stream`` (prefetch on a side stream; accelerators with streams only), ``pin_memory``,
    ``offload_device`` (only ``"cpu"``).
    """
    allowed = ("offload_type", "num_blocks_per_group", "use_stream", "pin_memory", "offload_device")
    _check_options("group", plan.options, allowed)
    options = dict(plan.options)
    target = torch.device(options.pop("offload_device", "cpu") or "cpu")
    if target.type != "cpu":
        raise ConfigError(f"offload_device={target}: group offload keeps weights on the CPU; pass 'cpu'")
    handle = _GroupOffloaded()
    for name, module in _ordered(_keep_excluded(models, plan), plan):
        handle.runs[name] = (module, apply_group_offload(module, plan.execution_device, **options))
    return handle


# -- pipelines: what the thin methods of DiffusionPipeline call ------------------------------------

_STATE = "_difflux_offload"


@dataclasses.dataclass
class ActiveOffload:
    """The offload a pipeline runs with: strategy name, its handle, device and options."""

    strategy: str
    handle: Offloaded
    device: torch.device
    options: dict[str, Any]


def active(pipe: Any) -> ActiveOffload | None:
    """The offload enabled on ``pipe`` (a pipeline or model), or ``None``."""
    state = getattr(pipe, "__dict__", {}).get(_STATE)
    return state if isinstance(state, ActiveOffload) else None


def offload_sequence(pipe: Any) -> tuple[str, ...]:
    """The names in ``pipe.model_cpu_offload_seq`` (``"text_encoder->unet->vae"``), checked against
    the pipeline's components."""
    seq = getattr(pipe, "model_cpu_offload_seq", None)
    if seq is None:
        return ()
    names = tuple(n.strip() for n in seq.split("->") if n.strip())
    unknown = [n for n in names if n not in pipe.components]
    if unknown:
        raise ConfigError(
            f"{type(pipe).__name__}.model_cpu_offload_seq = {seq!r} names {', '.join(unknown)}, which "
            f"{'is' if len(unknown) == 1 else 'are'} not among its components ({', '.join(pipe.components)})"
        )
    return names


def enable(pipe: Any, strategy: str, device: torch.device, options: Mapping[str, Any]) -> None:
    """Install the offload ``strategy`` on every torch-module component of ``pipe``.

    Enabling again (the same or another strategy) first removes the hooks already there.
    Raises :class:`ConfigError` on a pipeline placed by ``device_map`` (call ``reset_device_map()``
    first), for the ``"model"`` strategy on a pipeline that declares no ``model_cpu_offload_seq``,
    and for an unknown strategy name.
    """
    from .registry import get_registry

    name = type(pipe).__name__
    if getattr(pipe, "hf_device_map", None):
        raise ConfigError(
            f"{name} was loaded with device_map={getattr(pipe, 'hf_device_map', None)!r}; offload cannot be "
            "put on top of a device map: call pipe.reset_device_map() first, then enable the offload"
        )
    for component, module in pipe._torch_modules():
        placed = getattr(module, "hf_device_map", None)
        if isinstance(placed, Mapping) and len(set(placed.values())) > 1:
            raise ConfigError(
                f"{name}: component {component!r} was loaded with a per-module device_map ({dict(placed)}); "
                "offload cannot be put on top of it: load it without device_map, then enable the offload"
            )
    fn = get_registry().offload_strategy(strategy)
    if strategy == "model" and getattr(pipe, "model_cpu_offload_seq", None) is None:
        raise ConfigError(
            f"{name} declares no model_cpu_offload_seq (the order its models run in, e.g. "
            "'text_encoder->unet->vae'), so model offload cannot be enabled; set it on the class"
        )
    sequence = offload_sequence(pipe)
    remove(pipe)
    models = dict(pipe._torch_modules())
    plan = OffloadPlan(
        execution_device=device,
        sequence=sequence,
        exclude=frozenset(getattr(pipe, "_exclude_from_cpu_offload", ())),
        options=dict(options),
    )
    handle = fn(models, plan)
    pipe.__dict__[_STATE] = ActiveOffload(strategy, handle, device, dict(options))


def free(pipe: Any) -> None:
    """Offload everything the active strategy holds on the device; the hooks stay armed."""
    state = active(pipe)
    if state is not None:
        state.handle.free()


def remove(pipe: Any) -> ActiveOffload | None:
    """Remove the active strategy's hooks (models whole on the CPU); returns what was active."""
    state = active(pipe)
    if state is not None:
        del pipe.__dict__[_STATE]
        state.handle.remove()
    return state


def refuse_move(pipe: Any, device: torch.device) -> None:
    """The error for ``pipe.to(device)`` while offload is active and ``device`` is not the CPU."""
    state = active(pipe)
    if state is None:
        raise RuntimeError("refuse_move: internal check failed: state is not None")
    raise ConfigError(
        f"{type(pipe).__name__} runs with {state.strategy!r} offload (models move to {state.device} when they "
        f"run), so .to({str(device)!r}) would fight the offload hooks; either leave the placement to the "
        "offload, or call pipe.remove_all_hooks() (or pipe.to('cpu')) first and then move the pipeline"
    )
