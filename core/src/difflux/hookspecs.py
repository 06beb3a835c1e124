"""The hooks a difflux plugin can implement.

A plugin is a module named by an entry point in the group ``difflux``; it implements any of
these functions, decorated with ``@difflux.hookimpl``.  An implementation may take fewer
arguments than the spec, so specs only ever grow by optional arguments.

Implementations are called newest-registered first (core's own plugin registered first, so it
runs last); ``@hookimpl(tryfirst=True)`` / ``trylast=True`` move one to the front / back.

A ``firstresult`` resolver returns ``None`` for a name it does not own, and *raises* (a
``difflux.LoadError`` / ``UnknownClassError`` with a message, or an ``OSError``) for a name it owns
but cannot find. Any other exception from a behaviour hook, or a result of the wrong type,
becomes a ``difflux.PluginError`` naming the plugin and the hook (see docs/plugins.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .cli import RegisterCommand
    from .optimize import RegisterOptimization
    from .options import LoadOptions
    from .registry import (
        RegisterAttentionBackend,
        RegisterComponent,
        RegisterOffloadStrategy,
        RegisterPipeline,
        RegisterScheduler,
    )

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("difflux")
hookimpl = pluggy.HookimplMarker("difflux")


# -- registration hooks: called once, when the registry is first needed ----------------------


@hookspec
def difflux_register_pipelines(register: RegisterPipeline) -> None:
    """Register pipeline classes under their Diffusers class names.

    :param register: ``register(ref, *, name=None, aliases=())``. ``ref`` is the class or a
        lazy ``"module:Class"`` string (imported on first use); ``name`` defaults to the class
        name; ``aliases`` are extra names that resolve to the same class.
    """


@hookspec
def difflux_register_components(register: RegisterComponent) -> None:
    """Register model and processor classes, keyed as ``model_index.json`` names them.

    :param register: ``register(ref, *, name=None, library="diffusers")``. The pair
        ``(library, name)`` is the ``[library, ClassName]`` entry of ``model_index.json``.
    """


@hookspec
def difflux_register_schedulers(register: RegisterScheduler) -> None:
    """Register scheduler classes and the sampler names people already use.

    :param register: ``register(ref, *, name=None, aliases=None)``. ``aliases`` maps an
        alias (``"DPM++ 2M Karras"``) to the config overrides it implies
        (``{"use_karras_sigmas": True}``).
    """


@hookspec
def difflux_register_attention_backends(register: RegisterAttentionBackend) -> None:
    """Register attention kernels with the constraints they check.

    :param register: ``register(name, ref, *, priority=0, devices=None, dtypes=None,
        supports_mask=True, supports_causal=True, max_head_dim=None, requires=())``.
        ``ref`` is a function (or ``"module:function"``) with the signature of
        :func:`difflux.attention.attention` minus ``backend``; ``requires`` names modules
        that must be importable for the backend to be usable.
    """


@hookspec
def difflux_register_optimizations(register: RegisterOptimization) -> None:
    """Register fast-path optimisations that ``optimize()`` applies (compile, CUDA graphs, TensorRT ...).

    Collected on the first ``optimize()`` call, not when the registry is built.

    :param register: ``register(name, ref, *, order=500, modes=("default", "max"), devices=None,
        group=None, requires=())``. ``ref`` is ``apply(ctx) -> str | None`` (or ``"module:function"``):
        it optimises ``ctx.model`` in place (a :class:`difflux.optimize.OptimizeContext`) and returns
        ``None``, or the reason it does not apply. ``order`` sorts application (compilers 500, graph
        capture 900); ``devices`` limits the device types; of a ``group`` (``"compiler"``) only the
        first optimisation that applies runs; ``requires`` names modules that must be importable.
    """


@hookspec
def difflux_register_offload_strategies(register: RegisterOffloadStrategy) -> None:
    """Register ways to keep models off the accelerator until they run (see ``docs/memory.md``).

    :param register: ``register(name, ref)``. ``ref`` is a callable (or a lazy ``"module:function"``
        string) ``strategy(models, plan) -> handle``: ``models`` maps component names to
        ``torch.nn.Module``s, ``plan`` is a :class:`difflux.offload.OffloadPlan` (execution device,
        ``model_cpu_offload_seq`` order, excluded components, the strategy's options); the handle
        has ``free()`` (offload everything, hooks stay) and ``remove()`` (remove the hooks, models
        whole on the CPU). ``pipe.enable_offload(name, device=..., **options)`` selects it; core
        registers ``"model"``, ``"sequential"`` and ``"group"`` this way.
    """


@hookspec
def difflux_register_commands(register: RegisterCommand) -> None:
    """Register subcommands of the ``difflux`` command line (``difflux batch``, ``difflux serve`` ...).

    Collected when the ``difflux`` command builds its parser, not when the registry is built.

    :param register: ``register(name, ref, *, help="")``. ``ref`` is ``add(parser) -> None`` (or a
        lazy ``"module:function"`` string, imported when the parser is built): it adds the
        subcommand's arguments to ``parser`` (an ``argparse.ArgumentParser`` whose prog is
        ``difflux NAME``; ``--debug`` is added for it) and sets the handler with
        ``parser.set_defaults(handler=run)``, where ``run(args, out) -> int`` returns the exit status
        and raises ``difflux.cli.UsageError`` (exit status 2) for a bad command line. The module
        ``ref`` names must import nothing heavy (torch, ray ...); ``run`` imports what it needs.
        A name that core or another plugin already uses is skipped with one line on standard error.
    """


# -- behaviour hooks ----------------------------------------------------------------------------


@hookspec(firstresult=True)
def difflux_resolve_pretrained(name_or_path: str, options: LoadOptions) -> Path | None:
    """Turn a repo id or path into a local folder; ``firstresult``.

    Core resolves existing local paths last; the hub plugin resolves repo ids.

    :param name_or_path: what the user passed to ``from_pretrained``.
    :param options: the load options (revision, cache_dir, token, ...).
    :return: the local folder (``str`` or ``os.PathLike``), or ``None`` to let another plugin try.
    :raises difflux.LoadError: a name this plugin owns (a repo id, for the hub) that cannot be found.
    """


@hookspec(firstresult=True)
def difflux_load_component(library: str, class_name: str, folder: Path, options: LoadOptions) -> Any:
    """Load a component that no registered class provides (e.g. a ``transformers`` model); ``firstresult``.

    :param library: the first item of the ``model_index.json`` entry (``"transformers"``).
    :param class_name: the second item (``"CLIPTextModel"``).
    :param folder: the component's folder.
    :param options: the load options, with ``torch_dtype`` already resolved for this component.
    :return: the loaded component, or ``None`` when this plugin does not handle it.
    """


@hookspec
def difflux_component_loaded(name: str, component: Any, options: LoadOptions) -> Any:
    """Observe or replace a component right after it is loaded (quantize, cast, compile).

    :param name: the component's name in the pipeline (``"unet"``), or ``""`` outside a pipeline.
    :param component: the loaded object.
    :param options: the load options.
    :return: ``None`` to keep ``component``, or a replacement object. When several plugins
        return replacements, the one called first (registered last) wins.
    """


@hookspec(firstresult=True)
def difflux_load_pipeline_class(folder: Path, index: dict[str, Any], options: LoadOptions) -> type | None:
    """Return the pipeline class for custom code (``custom_pipeline=``, or a ``_class_name`` of
    ``[module, ClassName]`` in ``model_index.json``); ``firstresult``.

    Core calls it only when ``options.custom_pipeline`` is set or ``_class_name`` names a module;
    it never imports code from a folder itself. An implementation must refuse code from a repo
    unless ``options.trust_remote_code`` is true.

    :param folder: the resolved pipeline folder (holding ``model_index.json``).
    :param index: the parsed ``model_index.json``.
    :param options: the load options (``custom_pipeline``, ``custom_revision``, ``trust_remote_code`` ...).
    :return: a ``DiffusionPipeline`` subclass, or ``None`` when this plugin does not handle it.
    """


@hookspec(firstresult=True)
def difflux_push_to_hub(obj: Any, repo_id: str, options: dict[str, Any]) -> Any:
    """Upload a pipeline, model or scheduler to a Hub repo; ``firstresult``.

    :param obj: the object whose ``save_pretrained`` writes the files to upload.
    :param repo_id: the target repo (``"org/name"``), created when missing.
    :param options: ``commit_message``, ``private``, ``token``, ``create_pr``,
        ``safe_serialization`` and ``variant``, as passed to ``push_to_hub``.
    :return: the commit information, or ``None`` when this plugin does not handle it.
    """
