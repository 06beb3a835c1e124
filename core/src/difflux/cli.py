"""The ``difflux`` command line.

Each subcommand is one ``_add_<name>(subparsers)`` function that builds its parser and sets
``handler``; adding a subcommand means writing that function and listing it in ``_COMMANDS``.
``difflux plugins`` needs only the registry, so it never imports torch; ``generate`` and ``info``
import it when they run.

Errors are one line on standard error (``difflux generate: error: ...``) naming the command-line
flag, without a traceback; ``--debug`` shows the traceback. Exit status: 0 done, 1 an error while
loading or running, 2 a bad command line (refused before any model loads), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import inspect
import json
import math
import os
import re
import sys
import traceback
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol, TextIO

from ._providers import install_hint
from .errors import DiffluxError
from .registry import AttentionBackendSpec, Registry, get_registry, import_ref

__all__ = [
    "OUTPUT_FORMATS",
    "OutputFormat",
    "RegisterCommand",
    "UsageError",
    "build_parser",
    "generate_kwargs",
    "image_grid",
    "info_report",
    "load_pipeline",
    "main",
    "plugins_report",
    "scheduler_for",
]

Handler = Callable[[argparse.Namespace, TextIO], int]


class UsageError(DiffluxError, ValueError):
    """A command-line option is invalid; found before any model loads (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (what, and where to read more) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, not {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


# -- difflux plugins -------------------------------------------------------------------------


def _backend_constraints(spec: AttentionBackendSpec) -> dict[str, Any]:
    return {
        "priority": spec.priority,
        "devices": sorted(spec.devices) if spec.devices is not None else None,
        "dtypes": sorted(spec.dtypes) if spec.dtypes is not None else None,
        "supports_mask": spec.supports_mask,
        "supports_causal": spec.supports_causal,
        "max_head_dim": spec.max_head_dim,
        "requires": list(spec.requires),
    }


def plugins_report(registry: Registry | None = None) -> dict[str, Any]:
    """What ``difflux plugins --json`` prints: loaded plugins, what each registered, skipped ones."""
    registry = registry or get_registry()
    plugins: list[dict[str, Any]] = []
    for info in registry.plugins.values():
        name = info.name
        backends = []
        for spec in registry.attention_backends.values():
            if spec.plugin != name:
                continue
            why = spec.available()
            entry = {"name": spec.name, **_backend_constraints(spec), "available": why is None, "unavailable": why}
            backends.append(entry)
        plugins.append(
            {
                "name": name,
                "distribution": info.distribution,
                "version": info.version,
                "module": info.module,
                "pipelines": sorted(k for k, r in registry.pipelines.items() if r.plugin == name),
                "components": sorted(
                    f"{lib}.{cls}" for (lib, cls), r in registry.components.items() if r.plugin == name
                ),
                "schedulers": [
                    {
                        "name": sname,
                        "aliases": sorted(a.alias for a in registry.scheduler_aliases.values() if a.scheduler == sname),
                    }
                    for sname, r in sorted(registry.schedulers.items())
                    if r.plugin == name
                ],
                "attention_backends": sorted(backends, key=lambda b: (-b["priority"], b["name"])),
                "hooks": _behaviour_hooks(registry, name),
                "commands": _plugin_command_names(registry, name),
            }
        )
    usable = sorted(
        (s for s in registry.attention_backends.values() if s.available() is None),
        key=lambda s: (-s.priority, s.name),
    )
    return {
        "plugins": plugins,
        "skipped": [{"name": n, "reason": why} for n, why in sorted(registry.skipped.items())],
        "default_attention_backend": usable[0].name if usable else None,
    }


def _behaviour_hooks(registry: Registry, plugin_name: str) -> list[str]:
    """The behaviour hooks (resolvers, loaders, observers) a plugin implements."""
    plugin = registry.pm.get_plugin(plugin_name)
    callers = registry.pm.get_hookcallers(plugin) or [] if plugin is not None else []
    return sorted(c.name for c in callers if not c.name.startswith("difflux_register_"))


def _plugin_command_names(registry: Registry, plugin_name: str) -> list[str]:
    """The subcommands a plugin registers through ``difflux_register_commands`` (nothing is imported)."""
    names: list[str] = []
    for impl in registry.hook.difflux_register_commands.get_hookimpls():
        if impl.plugin_name == plugin_name:
            with contextlib.suppress(Exception):  # a failing plugin is reported when the parser is built
                impl.function(register=lambda name, ref, **_: names.append(name))
    return sorted(names)


def _describe_backend(b: dict[str, Any]) -> str:
    parts = [f"priority {b['priority']}"]
    parts.append("devices " + ",".join(b["devices"]) if b["devices"] is not None else "any device")
    parts.append("dtypes " + ",".join(b["dtypes"]) if b["dtypes"] is not None else "any dtype")
    if not b["supports_mask"]:
        parts.append("no mask")
    if not b["supports_causal"]:
        parts.append("no causal")
    if b["max_head_dim"] is not None:
        parts.append(f"head dim <= {b['max_head_dim']}")
    if b["requires"]:
        parts.append("requires " + ",".join(b["requires"]))
    if not b["available"]:
        parts.append(f"UNAVAILABLE: {b['unavailable']}")
    return "; ".join(parts)


def _print_plugins(report: dict[str, Any], out: TextIO) -> None:
    for p in report["plugins"]:
        version = f" {p['version']}" if p["version"] else ""
        out.write(f"{p['name']}  ({p['distribution']}{version}, module {p['module']})\n")
        lines: list[str] = []
        lines += [f"pipeline           {n}" for n in p["pipelines"]]
        lines += [f"component          {n}" for n in p["components"]]
        for s in p["schedulers"]:
            alias = f"  aliases: {', '.join(s['aliases'])}" if s["aliases"] else ""
            lines.append(f"scheduler          {s['name']}{alias}")
        lines += [f"attention backend  {b['name']}  ({_describe_backend(b)})" for b in p["attention_backends"]]
        lines += [f"hook               {h}" for h in p["hooks"]]
        lines += [f"command            difflux {c}" for c in p.get("commands", ())]
        for line in lines or ["(registers nothing)"]:
            out.write(f"    {line}\n")
    if report["skipped"]:
        out.write("skipped plugins:\n")
        for s in report["skipped"]:
            out.write(f"    {s['name']}: {s['reason']}\n")
    out.write(f"default attention backend: {report['default_attention_backend'] or 'none'}\n")


def _run_check(args: argparse.Namespace, out: TextIO) -> int:
    """``difflux plugins --check``: import every lazy reference, validate every alias; 1 when anything is wrong."""
    report = get_registry().check()
    if args.json:
        json.dump(dataclasses.asdict(report), out, indent=2)
        out.write("\n")
    else:
        for line in report.unavailable:
            out.write(f"unavailable here (not a problem): {line}\n")
        for line in report.problems:
            out.write(f"problem: {line}\n")
        verdict = f"{len(report.problems)} problem(s)" if report.problems else "ok"
        out.write(f"{verdict}: imported {report.imported} references, validated {report.aliases} scheduler aliases\n")
    return 1 if report.problems else 0


def _run_plugins(args: argparse.Namespace, out: TextIO) -> int:
    if args.check:
        return _run_check(args, out)
    report = plugins_report()
    if args.json:
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        _print_plugins(report, out)
    return 0


def _add_plugins(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plugins",
        help="list loaded plugins and what they register",
        description="List each loaded plugin, its distribution and version, what it registers "
        "(pipelines, components, schedulers and aliases, attention backends), and skipped plugins.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--check",
        action="store_true",
        help="import every registered class and backend and validate every scheduler alias; "
        "exit status 1 when one is broken",
    )
    _add_debug(p)
    p.set_defaults(handler=_run_plugins)


# -- difflux generate ----------------------------------------------------------------------------

#: What ``difflux generate`` loads when no model is named: the embedded digits pipeline of
#: ``difflux-pipelines-unconditional`` (its plugin resolves this name to the packaged folder).
DEFAULT_MODEL = "difflux:digits"
DEFAULT_MODEL_DISTRIBUTION = "difflux-pipelines-unconditional"
#: Denoising steps for the default model when ``--steps`` is not given (as good as DDIM's usual 50 there).
DEFAULT_MODEL_STEPS = 20
#: What ``difflux generate --prompt ...`` loads when no model is named: the embedded text-to-image
#: Stable Diffusion of ``difflux-stable-diffusion`` (its plugin resolves this name to the packaged folder).
TEXT2IMG_MODEL = "difflux:digits-text2img"
#: Each embedded model -> (the distribution that ships it, its denoising steps when ``--steps`` is not given).
EMBEDDED_MODELS: dict[str, tuple[str, int]] = {
    DEFAULT_MODEL: (DEFAULT_MODEL_DISTRIBUTION, DEFAULT_MODEL_STEPS),
    TEXT2IMG_MODEL: ("difflux-stable-diffusion", 20),
}

#: command-line option -> the ``__call__`` parameters that take it, in order of preference
_CALL_PARAMETERS: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt",),
    "negative_prompt": ("negative_prompt",),
    "class_label": ("class_labels",),
    "steps": ("num_inference_steps",),
    "guidance_scale": ("guidance_scale",),
    "height": ("height",),
    "width": ("width",),
    "num_images": ("batch_size", "num_images_per_prompt", "num_waveforms_per_prompt"),
    "audio_length": ("audio_length_in_s",),
    "midi": ("midi",),
    "transcription": ("transcription",),
}


def _call_parameters(pipe: Any) -> dict[str, inspect.Parameter]:
    call = inspect.unwrap(type(pipe).__call__)
    return dict(list(inspect.signature(call).parameters.items())[1:])


def _num_classes(pipe: Any) -> int | None:
    """How many classes a class-conditional pipeline's model knows (``num_class_embeds``), if any."""
    for component in pipe.components.values():
        config = getattr(component, "config", None)
        if isinstance(config, Mapping) and isinstance(config.get("num_class_embeds"), int):
            return int(config["num_class_embeds"])
    return None


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def generate_kwargs(pipe: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The ``__call__`` keyword arguments for the options given, refusing those the pipeline does not take.

    A class-conditional pipeline gets one label per image: ``--class-label`` for all of them, or,
    for a model with at most 16 classes, one image of each class in order.
    """
    import torch

    params = _call_parameters(pipe)
    name = type(pipe).__name__
    takes = ", ".join(p for p in params if p != "return_dict")
    kwargs: dict[str, Any] = {}
    for option, candidates in _CALL_PARAMETERS.items():
        value = getattr(args, option)
        if value is None or (option in ("class_label", "num_images") and "class_labels" in params):
            continue
        target = next((c for c in candidates if c in params), None)
        if target is None:
            raise UsageError(f"{_flag(option)} does not apply to {name}; it takes: {takes}")
        kwargs[target] = value
    if "class_labels" in params:
        classes = _num_classes(pipe)
        count = args.num_images or (classes if classes is not None and classes <= 16 else 1)
        if args.class_label is not None:
            kwargs["class_labels"] = [args.class_label] * count
        elif classes is not None:
            kwargs["class_labels"] = [i % classes for i in range(count)]
        elif params["class_labels"].default is inspect.Parameter.empty:
            raise UsageError(f"{name} needs --class-label N")
        if "batch_size" in params:
            kwargs["batch_size"] = count
    if args.seed is not None:
        if "generator" not in params:
            raise UsageError(f"--seed does not apply to {name}; it takes: {takes}")
        kwargs["generator"] = torch.Generator().manual_seed(args.seed)
    if "output_type" in params:
        kwargs["output_type"] = "np" if _output_kind(pipe) == "audio" else "pil"
    return kwargs


def image_grid(images: Sequence[Any], min_side: int = 64) -> Any:
    """Images side by side (up to 5 per row for ten or fewer, else a square), small ones enlarged (nearest)."""
    import math

    import PIL.Image

    count = len(images)
    cols = min(count, 5) if count <= 10 else math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    w, h = images[0].size
    scale = max(1, math.ceil(min_side / min(w, h)))
    w, h = w * scale, h * scale
    grid = PIL.Image.new(images[0].mode, (cols * w, rows * h))
    for i, image in enumerate(images):
        tile = image.resize((w, h), PIL.Image.Resampling.NEAREST) if scale > 1 else image
        grid.paste(tile, ((i % cols) * w, (i // cols) * h))
    return grid


def _write_wav(path: Path, audios: Any, sample_rate: int) -> None:
    """Waveforms in ``[-1, 1]`` as one 16-bit WAV, the clips one after another.

    ``audios``: ``(batch, channels, samples)`` (Dance Diffusion), ``(batch, samples)`` (the latent
    text-to-audio pipelines, mono) or ``(samples,)``; a tensor or an array. Written with
    ``soundfile`` when it is installed, else with the standard library's ``wave``.
    """
    import wave

    import numpy as np

    array = audios.detach().cpu().float().numpy() if hasattr(audios, "detach") else np.asarray(audios)
    array = array.reshape(1, 1, -1) if array.ndim == 1 else array[:, None] if array.ndim == 2 else array
    data = np.concatenate(list(array), axis=-1)  # (channels, samples)
    pcm = (np.clip(data, -1, 1) * 32767).astype("<i2").T.copy()
    try:
        import soundfile
    except ImportError:
        soundfile = None
    if soundfile is not None:
        soundfile.write(str(path), pcm, sample_rate, subtype="PCM_16", format="WAV")
        return
    with wave.open(str(path), "wb") as out:
        out.setnchannels(pcm.shape[1])
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())


@dataclasses.dataclass(frozen=True)
class OutputFormat:
    """A file type ``difflux generate`` writes: what it holds (``"image"`` / ``"audio"``) and how."""

    kind: str
    #: the Pillow format name (images), or a label (audio)
    format: str


#: ``--output`` extension -> what it holds and how it is written. One table: a new output kind
#: (video, ...) adds its extensions here and a branch in :func:`_write_output`.
OUTPUT_FORMATS: dict[str, OutputFormat] = {
    ".png": OutputFormat("image", "PNG"),
    ".jpg": OutputFormat("image", "JPEG"),
    ".jpeg": OutputFormat("image", "JPEG"),
    ".webp": OutputFormat("image", "WEBP"),
    ".bmp": OutputFormat("image", "BMP"),
    ".tif": OutputFormat("image", "TIFF"),
    ".tiff": OutputFormat("image", "TIFF"),
    ".wav": OutputFormat("audio", "WAV"),
}


def _extensions(kind: str | None = None) -> str:
    return ", ".join(ext for ext, f in OUTPUT_FORMATS.items() if kind is None or f.kind == kind)


def _check_output(text: str) -> Path:
    """``--output``: a known extension, not a folder, in a folder that exists or can be made and is writable."""
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        raise UsageError(f"--output {text!r} is a folder; name a file in it, such as {path / 'output.png'}")
    if suffix not in OUTPUT_FORMATS:
        what = "has no file extension" if not suffix else f"has the extension {suffix!r}, which difflux does not write"
        raise UsageError(f"--output {text!r} {what}; use one of {_extensions()}")
    existing = path.absolute().parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--output {text!r}: {existing} is a file, not a folder, so nothing can be written under it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--output {text!r}: the folder {existing} cannot be written (permission denied)")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"--output {text!r}: the file exists and cannot be overwritten (permission denied)")
    return path


def _check_device(text: str) -> None:
    """``--device``: a device name torch knows, present on this machine."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text!r} is not a device name; use cpu, cuda, cuda:1, mps ...") from None
    if device.type == "cpu":
        return
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available) or not is_available():
        raise UsageError(f"--device {text!r}: this machine has no {device.type} device; use --device cpu")
    count = getattr(backend, "device_count", None)
    if device.index is not None and callable(count) and device.index >= count():
        raise UsageError(f"--device {text!r}: this machine has {count()} {device.type} device(s), numbered from 0")


def _check_generate_options(args: argparse.Namespace) -> Path:
    """Everything about the options that can be checked before the model loads; the output path."""
    output = _check_output(args.output)
    if args.device is not None:
        _check_device(args.device)
    if args.midi is not None and not Path(args.midi).is_file():
        raise UsageError(f"--midi {args.midi!r}: no such file")
    return output


def _output_kind(pipe: Any) -> str:
    """What a pipeline makes: its class attribute ``output_kind`` (``"audio"`` / ``"image"``) when it
    declares one, else ``"audio"`` for pipelines that take ``audio_length_in_s``, else ``"image"``."""
    declared = getattr(type(pipe), "output_kind", None)
    if isinstance(declared, str):
        return declared
    return "audio" if "audio_length_in_s" in _call_parameters(pipe) else "image"


def _sample_rate(result: Any, pipe: Any) -> int:
    """The sample rate of an audio result (Hz): ``result.sample_rate``, else the pipeline's
    ``sample_rate``, else its UNet config's ``sample_rate``, else 16 kHz."""
    for rate in (getattr(result, "sample_rate", None), getattr(pipe, "sample_rate", None)):
        if isinstance(rate, int) and rate > 0:
            return rate
    unet = getattr(pipe, "unet", None)
    config = getattr(unet, "config", None)
    rate = config.get("sample_rate") if config is not None and hasattr(config, "get") else None
    return int(rate or 16000)


def _check_against_pipeline(pipe: Any, args: argparse.Namespace, output: Path) -> None:
    """Options that depend on the loaded pipeline, checked before it runs."""
    name = type(pipe).__name__
    kind = _output_kind(pipe)
    wanted = OUTPUT_FORMATS[output.suffix.lower()].kind
    if wanted != kind:
        raise UsageError(f"--output {str(output)!r}: {name} makes {kind}, not {wanted}; use one of {_extensions(kind)}")
    if args.class_label is not None and "class_labels" in _call_parameters(pipe):
        classes = _num_classes(pipe)
        if classes is not None and args.class_label >= classes:
            raise UsageError(
                f"--class-label {args.class_label} is out of range: the model of {name} knows {classes} "
                f"classes, 0 to {classes - 1}"
            )


def _scheduler_for(pipe: Any, wanted: str) -> Any:
    """The pipeline's scheduler replaced by ``--scheduler`` (a class name or sampler alias, any case)."""
    registry = get_registry()
    name = type(pipe).__name__
    current = getattr(pipe, "scheduler", None)
    if current is None or not hasattr(current, "config"):
        raise UsageError(f"--scheduler does not apply to {name}: it has no scheduler")
    if wanted in registry.schedulers or wanted.casefold() in {a.casefold() for a in registry.scheduler_aliases}:
        cls, overrides = registry.resolve_scheduler(wanted)
        return cls.from_config(current.config, **overrides)
    own = type(current).__name__
    classes = [c for c in dict.fromkeys([own, *getattr(current, "_compatibles", ())]) if c in registry.schedulers]
    aliases = sorted(a.alias for a in registry.scheduler_aliases.values() if a.scheduler in classes)
    valid = [*sorted(classes), *aliases]
    by_fold = {v.casefold(): v for v in valid}
    close = difflib.get_close_matches(wanted.casefold(), list(by_fold), n=1, cutoff=0.7)
    message = f"--scheduler {wanted!r} is not a scheduler or sampler name for {name} (scheduler {own})"
    if close:
        message += f"; did you mean {by_fold[close[0]]!r}?"
    raise UsageError(f"{message} (valid names: {', '.join(valid) or own})")


def _write_output(path: Path, result: Any, pipe: Any) -> str:
    """Write the images (one grid) or audio of ``result`` to ``path``, atomically; says what was written."""
    fmt = OUTPUT_FORMATS[path.suffix.lower()]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        if fmt.kind == "audio":
            audios = result.audios
            _write_wav(partial, audios, _sample_rate(result, pipe))
            what = f"{len(audios)} audio clip(s)"
        else:
            images = result.images
            grid = image_grid(images)
            if fmt.format == "JPEG" and grid.mode not in ("RGB", "L"):
                grid = grid.convert("RGB")
            grid.save(partial, format=fmt.format)
            what = f"{len(images)} image(s)"
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return what


def _load_pipeline(model: str, dtype: str | None = None, device: str | None = None) -> Any:
    from .pipeline import DiffusionPipeline

    if model in EMBEDDED_MODELS:
        distribution = EMBEDDED_MODELS[model][0]
        what = "the default model" if model == DEFAULT_MODEL else f"the embedded model {model}"
        registry = get_registry()
        if not any(p.distribution == distribution for p in registry.plugins.values()):
            skipped = sorted(n for n, d in registry.skipped_distributions.items() if d == distribution)
            if skipped:
                raise DiffluxError(
                    f"{what} comes with {distribution}, which is installed, but its "
                    f"plugin {skipped[0]!r} is {registry.skipped[skipped[0]]}; add {skipped[0]!r} to "
                    "DIFFLUX_LOAD_PLUGINS, or name a model folder"
                )
            raise DiffluxError(
                f"{what} comes with {distribution}, which is not installed: {install_hint(distribution)}, "
                "or name a model folder"
            )
    options: dict[str, Any] = {}
    if dtype is not None:
        options["torch_dtype"] = dtype
    pipe = DiffusionPipeline.from_pretrained(model, **options)
    if device is not None:
        pipe.to(device)
    return pipe


#: For plugins' commands (``difflux batch``, ``difflux serve``) that load a model and pick a scheduler as
#: ``generate`` does: the same errors (an embedded model whose plugin is missing, an unknown sampler name).
load_pipeline = _load_pipeline
scheduler_for = _scheduler_for


def _run_generate(args: argparse.Namespace, out: TextIO) -> int:
    import time

    output = _check_generate_options(args)
    start = time.perf_counter()
    # no model named: a prompt picks the embedded text-to-image model, a class label or nothing the digits model
    model = args.model or (TEXT2IMG_MODEL if args.prompt is not None else DEFAULT_MODEL)
    pipe = _load_pipeline(model, args.dtype, args.device)
    if model in EMBEDDED_MODELS and args.steps is None:
        args.steps = EMBEDDED_MODELS[model][1]
    _check_against_pipeline(pipe, args, output)
    if args.scheduler is not None:
        pipe.register_modules(scheduler=_scheduler_for(pipe, args.scheduler))
    kwargs = generate_kwargs(pipe, args)
    result = pipe(**kwargs)
    what = _write_output(output, result, pipe)
    out.write(f"wrote {what} to {output} ({type(pipe).__name__}, {time.perf_counter() - start:.1f} s)\n")
    return 0


def _add_generate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "generate",
        help="run a pipeline and write the images (one grid) or audio (WAV)",
        description="Load MODEL_OR_FOLDER (default: with --prompt the embedded text-to-image model "
        f"{TEXT2IMG_MODEL}, else the embedded digits model {DEFAULT_MODEL}) and run it, passing only "
        "the options given; an option the pipeline does not take is an error. Options are checked "
        "before the model loads.",
    )
    p.add_argument(
        "model",
        nargs="?",
        metavar="MODEL_OR_FOLDER",
        help=f"pipeline folder or repo id (default {TEXT2IMG_MODEL} with --prompt, else {DEFAULT_MODEL})",
    )
    p.add_argument("--prompt", help="text prompt (text-conditioned pipelines)")
    p.add_argument("--negative-prompt", help="what to steer away from (pipelines with guidance)")
    p.add_argument(
        "--class-label", type=_int_at_least(0), help="class id for every image (class-conditional pipelines)"
    )
    p.add_argument("--steps", type=_int_at_least(1), help="number of denoising steps (default: the pipeline's)")
    p.add_argument("--scheduler", help="scheduler class name or sampler alias, e.g. 'DPM++ 2M Karras'")
    p.add_argument("--guidance-scale", type=_finite_float, help="classifier-free guidance scale")
    p.add_argument("--seed", type=_int_at_least(0), help="seed of the random generator (reproducible output)")
    p.add_argument(
        "--num-images",
        type=_int_at_least(1),
        help="how many images or audio clips (default: one per class for a small class-conditional model, else 1)",
    )
    p.add_argument(
        "--audio-length", type=_positive_float, help="clip length in seconds (audio pipelines)", metavar="SECONDS"
    )
    p.add_argument("--midi", metavar="FILE", help="MIDI file to synthesize (Spectrogram Diffusion)")
    p.add_argument("--transcription", metavar="TEXT", help="the words to speak (AudioLDM 2 text-to-speech)")
    p.add_argument("--height", type=_int_at_least(1), help="image height in pixels")
    p.add_argument("--width", type=_int_at_least(1), help="image width in pixels")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps ... (default: cpu)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="weights dtype (default: as saved)")
    p.add_argument(
        "--output",
        default="output.png",
        help=f"file to write (default: output.png in the current directory); one of {_extensions()}",
    )
    _add_debug(p)
    p.set_defaults(handler=_run_generate)


# -- difflux info -----------------------------------------------------------------------------


def info_report(pipe: Any) -> dict[str, Any]:
    """What ``difflux info --json`` prints: the pipeline class and, per component, class, plugin, size, dtypes."""
    import torch

    registry = get_registry()

    def plugin_of(obj: Any) -> dict[str, str] | None:
        found = registry.owner(type(obj))
        return {"name": found.name, "distribution": found.distribution} if found is not None else None

    components: list[dict[str, Any]] = []
    for name, component in pipe.components.items():
        entry: dict[str, Any] = {"name": name, "class": type(component).__name__ if component is not None else None}
        entry["plugin"] = plugin_of(component) if component is not None else None
        if isinstance(component, torch.nn.Module):
            entry["parameters"] = sum(p.numel() for p in component.parameters())
            entry["dtypes"] = sorted({str(p.dtype).removeprefix("torch.") for p in component.parameters()})
        components.append(entry)
    config = {k: v for k, v in pipe.config.items() if k not in pipe.components and not k.startswith("_")}
    return {
        "pipeline": type(pipe).__name__,
        "plugin": plugin_of(pipe),
        "source": pipe.name_or_path,
        "config": config,
        "components": components,
        "parameters": sum(c.get("parameters", 0) for c in components),
    }


def _print_info(report: dict[str, Any], out: TextIO) -> None:
    def origin(plugin: dict[str, str] | None) -> str:
        return f"{plugin['distribution']} (plugin {plugin['name']})" if plugin else "not from a difflux plugin"

    out.write(f"{report['pipeline']}  from {origin(report['plugin'])}\n")
    if report["source"]:
        out.write(f"source: {report['source']}\n")
    width = max((len(c["name"]) for c in report["components"]), default=4)
    for c in report["components"]:
        size = f"{c['parameters']:,} parameters, {'/'.join(c['dtypes']) or '-'}" if "parameters" in c else "-"
        cls = c["class"] or "(none)"
        out.write(f"    {c['name']:<{width}}  {cls:<28} {size:<36} {origin(c['plugin']) if c['class'] else ''}\n")
    out.write(f"total: {report['parameters']:,} parameters\n")
    for key, value in sorted(report["config"].items()):
        text = json.dumps(value, default=str)
        out.write(f"config {key}: {text if len(text) <= 100 else text[:97] + '...'}\n")


def _run_info(args: argparse.Namespace, out: TextIO) -> int:
    report = info_report(_load_pipeline(args.model or DEFAULT_MODEL))
    if args.json:
        json.dump(report, out, indent=2, default=str)
        out.write("\n")
    else:
        _print_info(report, out)
    return 0


def _add_info(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "info",
        help="describe a pipeline: classes, plugins, parameter counts, dtypes",
        description="Load MODEL_OR_FOLDER and print its pipeline class and, for each component, its "
        "class, the plugin that provides it, its parameter count and dtypes.",
    )
    p.add_argument(
        "model", nargs="?", metavar="MODEL_OR_FOLDER", help=f"pipeline folder or repo id (default {DEFAULT_MODEL})"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _add_debug(p)
    p.set_defaults(handler=_run_info)


# -- the parser ------------------------------------------------------------------------------

#: One function per subcommand; each adds its parser and sets ``handler``.
_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_generate,
    _add_info,
    _add_plugins,
]


def _add_debug(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    # On every subcommand too, so `difflux generate ... --debug` works; SUPPRESS keeps the top-level value.
    parser.add_argument("--debug", action="store_true", default=default, help="on an error, show the traceback")


class RegisterCommand(Protocol):
    """The ``register`` callback of the ``difflux_register_commands`` hook."""

    def __call__(self, name: str, ref: Any, *, help: str = "") -> None: ...


def _add_plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Subcommands from plugins (``difflux_register_commands``); a broken or clashing one is skipped with one line."""
    try:
        registry = get_registry()
    except Exception:  # the command that needs the registry reports why it cannot be built
        return
    taken = set(sub.choices)
    for impl in registry.hook.difflux_register_commands.get_hookimpls():
        plugin = impl.plugin_name

        def register(name: str, ref: Any, *, help: str = "", _plugin: str = plugin) -> None:
            if name in taken:
                sys.stderr.write(f"difflux: plugin {_plugin!r} registers the command {name!r}, which exists; skipped\n")
                return
            try:
                add = import_ref(ref) if isinstance(ref, str) else ref
                p = sub.add_parser(name, help=help, description=help)
                add(p)
            except Exception as exc:  # a broken plugin must not take the whole command line down
                sub.choices.pop(name, None)
                sub._choices_actions[:] = [a for a in sub._choices_actions if a.dest != name]
                sys.stderr.write(f"difflux: plugin {_plugin!r} command {name!r} skipped: {exc!r}\n")
                return
            _add_debug(p)
            taken.add(name)

        try:
            impl.function(register=register)
        except Exception as exc:
            sys.stderr.write(f"difflux: plugin {plugin!r} failed in difflux_register_commands: {exc!r}\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="difflux", description="Diffusers-format diffusion pipelines, as plugins.")
    parser.add_argument("--version", action="version", version=f"difflux {__version__}")
    _add_debug(parser, default=False)
    sub = typing.cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND"),
    )
    for add in _COMMANDS:
        add(sub)
    _add_plugin_commands(sub)
    return parser


#: Python parameter names in pipeline errors -> the flags a CLI user typed.
_FLAGS_FOR_PARAMETERS: dict[str, str] = {
    param: _flag(option) for option, params in _CALL_PARAMETERS.items() for param in params
}


def _one_line(exc: BaseException, command: str | None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, DiffluxError):
        text = f"{type(exc).__name__}: {text}"
    if command == "generate":
        for param, flag in _FLAGS_FOR_PARAMETERS.items():
            if param != flag.removeprefix("--"):
                text = re.sub(rf"(?<![\w-]){re.escape(param)}\b", flag, text)
    return text


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the ``difflux`` command; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(out or sys.stdout)
        return 2
    try:
        return handler(args, out or sys.stdout)
    except BrokenPipeError:  # `difflux plugins | head`
        return 0
    except KeyboardInterrupt:
        sys.stderr.write(f"difflux {args.command}: interrupted\n")
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc(file=sys.stderr)
        message = _one_line(exc, args.command)
        hint = "" if args.debug or isinstance(exc, DiffluxError) else " (run with --debug for the traceback)"
        sys.stderr.write(f"difflux {args.command}: error: {message}{hint}\n")
        return 2 if isinstance(exc, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
