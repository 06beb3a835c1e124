"""The ``difflux`` command line.

Each subcommand is one ``_add_<name>(subparsers)`` function that builds its parser and sets
``handler``; adding a subcommand means writing that function and listing it in ``_COMMANDS``.
``difflux plugins`` needs only the registry, so it never imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .registry import AttentionBackendSpec, Registry, get_registry

__all__ = ["build_parser", "main", "plugins_report"]

Handler = Callable[[argparse.Namespace, TextIO], int]


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
                        "aliases": sorted(
                            a.alias for a in registry.scheduler_aliases.values() if a.scheduler == sname
                        ),
                    }
                    for sname, r in sorted(registry.schedulers.items())
                    if r.plugin == name
                ],
                "attention_backends": sorted(backends, key=lambda b: (-b["priority"], b["name"])),
                "hooks": _behaviour_hooks(registry, name),
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
        for line in lines or ["(registers nothing)"]:
            out.write(f"    {line}\n")
    if report["skipped"]:
        out.write("skipped plugins:\n")
        for s in report["skipped"]:
            out.write(f"    {s['name']}: {s['reason']}\n")
    out.write(f"default attention backend: {report['default_attention_backend'] or 'none'}\n")


def _run_plugins(args: argparse.Namespace, out: TextIO) -> int:
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
    p.set_defaults(handler=_run_plugins)


# -- the parser ------------------------------------------------------------------------------

#: One function per subcommand; each adds its parser and sets ``handler``.
_COMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [_add_plugins]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="difflux", description="Diffusers-format diffusion pipelines, as plugins.")
    parser.add_argument("--version", action="version", version=f"difflux {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the ``difflux`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(out or sys.stdout)
        return 2
    from .errors import DiffluxError

    try:
        return handler(args, out or sys.stdout)
    except DiffluxError as exc:
        sys.stderr.write(f"difflux {args.command}: error: {exc}\n")
        return 1
    except BrokenPipeError:  # `difflux plugins | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
