"""Fast paths: optimisations that plugins register and ``optimize()`` applies.

A plugin registers an optimisation through the hook ``difflux_register_optimizations(register)``;
``DiffusionPipeline.optimize()`` and ``ModelMixin.optimize()`` apply, in ``order``, every
registered optimisation that takes part in the requested mode and runs on the model's device.
An optimisation's function gets an :class:`OptimizeContext` and returns ``None`` when it applied,
or a short reason when it did not (then one log line names the optimisation and the reason):
a piece that cannot apply is skipped, never a crash.

The first-party optimisations (channels-last, fused projections, regional ``torch.compile``,
CUDA graphs, CPU bf16 autocast) live in the plugin ``difflux-optimize``; a third party adds
another (a TensorRT or OneDiff backend) the same way, without touching core.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import torch

from .errors import ConfigError, PluginError
from .registry import Registry, get_registry, import_ref

__all__ = [
    "MODES",
    "OptimizationSpec",
    "OptimizeContext",
    "OptimizeReport",
    "RegisterOptimization",
    "offload_reason",
    "optimize_model",
    "optimize_pipeline",
    "registered_optimizations",
]

logger = logging.getLogger("difflux")

#: The modes ``optimize()`` takes. ``"default"`` keeps outputs within fp16 tolerance of eager;
#: ``"max"`` adds what needs static shapes (CUDA graphs) or trades precision (CPU bf16 autocast).
MODES = ("default", "max")

#: Pipeline components that run once per denoising step (where CUDA graphs pay off).
DENOISERS = frozenset({"unet", "transformer", "prior", "decoder", "unet_2"})


class RegisterOptimization(Protocol):
    def __call__(self, name: str, ref: Any, **constraints: Any) -> None: ...


@dataclasses.dataclass
class OptimizationSpec:
    """A registered optimisation.

    :param name: unique name (``"regional_compile"``); what ``skip=`` and ``only=`` take.
    :param ref: ``apply(ctx: OptimizeContext) -> str | None`` or a lazy ``"module:function"``.
    :param plugin: the plugin that registered it.
    :param order: ascending application order (layout 100, weights 200, precision 300,
        compilers 500, graph capture 900).
    :param modes: the modes it takes part in.
    :param devices: device types it runs on (``{"cuda"}``); ``None``: every device.
    :param group: at most one optimisation of a group applies to a model (the first in order
        that does not skip): ``"compiler"`` for whole-model compilers such as ``torch.compile``
        or TensorRT.
    :param requires: modules that must be importable.
    """

    name: str
    ref: Any
    plugin: str
    order: int = 500
    modes: frozenset[str] = frozenset(MODES)
    devices: frozenset[str] | None = None
    group: str | None = None
    requires: tuple[str, ...] = ()

    def unavailable(self) -> str | None:
        """``None`` when usable in this process, else why not."""
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                return f"needs the module {module!r}, which is not installed"
        return None

    def load(self) -> Callable[[OptimizeContext], str | None]:
        if isinstance(self.ref, str):
            try:
                self.ref = import_ref(self.ref)
            except (ImportError, AttributeError) as exc:
                raise PluginError(
                    f"plugin {self.plugin!r} registered optimization {self.name!r} as {self.ref!r}, "
                    f"which cannot be imported: {exc}"
                ) from exc
        return self.ref  # type: ignore[no-any-return]


@dataclasses.dataclass
class OptimizeContext:
    """What an optimisation sees: one model, and where it sits.

    :param model: the ``torch.nn.Module`` to optimise in place.
    :param name: its component name in the pipeline (``"unet"``), ``""`` for a bare model.
    :param pipeline: the pipeline that holds it, or ``None``.
    :param mode: ``"default"`` or ``"max"``.
    :param device: the model's device; ``dtype``: its floating dtype.
    :param options: the extra keyword options given to ``optimize()`` (``compile_backend``,
        ``cache_dir`` ...); an optimisation reads the ones it knows.
    :param applied: names of the optimisations already applied to this model, in order.
    :param groups: ``{group: optimisation name}`` already filled for this model.
    """

    model: torch.nn.Module
    name: str
    pipeline: Any
    mode: str
    device: torch.device
    dtype: torch.dtype
    options: Mapping[str, Any]
    applied: list[str] = dataclasses.field(default_factory=list)
    groups: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def is_denoiser(self) -> bool:
        """Whether the model runs once per denoising step (a bare model counts as one)."""
        return self.pipeline is None or self.name in DENOISERS

    @property
    def where(self) -> str:
        return self.name or type(self.model).__name__


@dataclasses.dataclass
class OptimizeReport:
    """What ``optimize()`` did: ``applied`` as ``(component, optimisation)``, ``skipped`` as
    ``(component, optimisation, reason)``."""

    mode: str
    applied: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)

    def applied_to(self, component: str) -> list[str]:
        """Names of the optimisations applied to ``component``, in order."""
        return [o for c, o in self.applied if c == component]

    def __str__(self) -> str:
        lines = [f"optimize(mode={self.mode!r})"]
        lines += [f"  applied {o} to {c}" for c, o in self.applied]
        lines += [f"  skipped {o} for {c}: {why}" for c, o, why in self.skipped]
        return "\n".join(lines)


# -- the registered optimisations ---------------------------------------------------------------

_tables: weakref.WeakKeyDictionary[Registry, dict[str, OptimizationSpec]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _collect(registry: Registry) -> dict[str, OptimizationSpec]:
    table: dict[str, OptimizationSpec] = {}
    hook = registry.hook.difflux_register_optimizations
    for impl in hook.get_hookimpls():
        plugin = impl.plugin_name

        def register(name: str, ref: Any, _plugin: str = plugin, **constraints: Any) -> None:
            old = table.get(name)
            if old is not None and old.plugin != _plugin:
                raise PluginError(
                    f"optimization {name!r} is registered by two plugins: {old.plugin!r} and {_plugin!r}; "
                    "uninstall one, or choose with DIFFLUX_LOAD_PLUGINS"
                )
            for key in ("modes", "devices"):
                if constraints.get(key) is not None:
                    constraints[key] = frozenset(constraints[key])
            if "requires" in constraints:
                constraints["requires"] = tuple(constraints["requires"])
            unknown_modes = set(constraints.get("modes", ())) - set(MODES)
            if unknown_modes:
                raise PluginError(
                    f"plugin {_plugin!r} registered optimization {name!r} for unknown modes "
                    f"{sorted(unknown_modes)}; modes are {list(MODES)}"
                )
            try:
                table[name] = OptimizationSpec(name=name, ref=ref, plugin=_plugin, **constraints)
            except TypeError as exc:
                raise PluginError(f"plugin {_plugin!r} registered optimization {name!r}: {exc}") from None
            info = registry.plugins.get(_plugin)
            if info is not None:
                info.registered.append(("optimization", name))

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(f"plugin {plugin!r} failed in difflux_register_optimizations: {exc!r}") from exc
    return dict(sorted(table.items(), key=lambda kv: (kv[1].order, kv[0])))


def registered_optimizations() -> dict[str, OptimizationSpec]:
    """Every registered optimisation, by name, in application order (collected once per registry)."""
    registry = get_registry()
    with _lock:
        table = _tables.get(registry)
        if table is None:
            table = _tables[registry] = _collect(registry)
    return table


# -- applying them ------------------------------------------------------------------------------


def offload_reason(model: torch.nn.Module) -> str | None:
    """Why ``model`` counts as offloaded (weights moved per call by hooks, or not materialised),
    or ``None``. Compilers and graph capture skip offloaded models."""
    for name, module in model.named_modules():
        if getattr(module, "_hf_hook", None) is not None:
            return f"it is offloaded (accelerate hook on {name or 'the model'})"
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            return f"its weights are not materialised ({name} is on the meta device)"
    return None


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _model_device(model: torch.nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _context(
    model: torch.nn.Module, name: str, pipeline: Any, mode: str, options: Mapping[str, Any]
) -> OptimizeContext:
    return OptimizeContext(
        model=model,
        name=name,
        pipeline=pipeline,
        mode=mode,
        device=_model_device(model),
        dtype=_model_dtype(model),
        options=options,
    )


def _select(mode: str, skip: Iterable[str], only: Iterable[str] | None) -> list[OptimizationSpec]:
    if mode not in MODES:
        raise ConfigError(f"optimize(mode={mode!r}): mode must be one of {list(MODES)}")
    table = registered_optimizations()
    skip = set(skip)
    chosen = set(only) if only is not None else None
    named = skip | (chosen or set())
    unknown = sorted(named - set(table))
    if unknown:
        raise ConfigError(
            f"optimize(): unknown optimization(s) {unknown}; registered: {', '.join(table) or 'none'} "
            "(optimisations come from plugins, e.g. pip install difflux-optimize)"
        )
    return [
        spec
        for spec in table.values()
        if spec.name not in skip
        and (chosen is None or spec.name in chosen)
        and (mode in spec.modes or (chosen is not None and spec.name in chosen))
    ]


def _apply(ctx: OptimizeContext, specs: list[OptimizationSpec], report: OptimizeReport) -> None:
    for spec in specs:
        why: str | None
        if spec.group is not None and spec.group in ctx.groups:
            why = f"the {spec.group} {ctx.groups[spec.group]!r} already applies"
        elif spec.devices is not None and ctx.device.type not in spec.devices:
            why = f"runs on {', '.join(sorted(spec.devices))}, not {ctx.device.type}"
        else:
            why = spec.unavailable()
        if why is None:
            why = spec.load()(ctx)
        if why is None:
            ctx.applied.append(spec.name)
            if spec.group is not None:
                ctx.groups[spec.group] = spec.name
            report.applied.append((ctx.where, spec.name))
            logger.debug("difflux optimize: applied %s to %s", spec.name, ctx.where)
        else:
            report.skipped.append((ctx.where, spec.name, why))
            logger.info("difflux optimize: skipped %s for %s: %s", spec.name, ctx.where, why)


def optimize_model(
    model: torch.nn.Module,
    mode: str = "default",
    *,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    name: str = "",
    pipeline: Any = None,
    report: OptimizeReport | None = None,
    **options: Any,
) -> OptimizeReport:
    """Apply the registered optimisations for ``mode`` to ``model``, in place.

    :param model: a torch module (a difflux model, usually).
    :param mode: ``"default"`` or ``"max"``.
    :param skip: optimisation names not to apply.
    :param only: apply only these (also outside their modes).
    :param options: read by the optimisations (see ``docs/optimize.md``).
    :raises ConfigError: for an unknown mode or optimisation name.
    :return: what was applied and what was skipped, and why.
    """
    specs = _select(mode, skip, only)
    report = report if report is not None else OptimizeReport(mode)
    _apply(_context(model, name, pipeline, mode, options), specs, report)
    return report


def optimize_pipeline(
    pipeline: Any,
    mode: str = "default",
    *,
    components: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    **options: Any,
) -> OptimizeReport:
    """Apply the registered optimisations to every difflux model of ``pipeline`` (or ``components``).

    Components that are not difflux models (``transformers`` text encoders) are left alone.

    :raises ConfigError: for an unknown mode, optimisation or component name.
    """
    from .modeling import ModelMixin

    specs = _select(mode, skip, only)
    found = pipeline.components
    names = list(components) if components is not None else [n for n, c in found.items() if isinstance(c, ModelMixin)]
    missing = [n for n in names if not isinstance(found.get(n), torch.nn.Module)]
    if missing:
        raise ConfigError(
            f"optimize(components=...): {missing} are not torch modules of this {type(pipeline).__name__}; "
            f"its model components: {[n for n, c in found.items() if isinstance(c, torch.nn.Module)]}"
        )
    report = OptimizeReport(mode)
    for name in names:
        _apply(_context(found[name], name, pipeline, mode, options), specs, report)
    return report
