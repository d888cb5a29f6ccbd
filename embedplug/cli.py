"""The ``embedplug`` command line (also ``python -m embedplug``).

Each subcommand is one builder function that adds its parser and sets ``handler``; :data:`SUBCOMMANDS`
lists them. To add a subcommand (``train``, ``bench``), write ``_add_<name>_command`` and its handler
and add one line to :data:`SUBCOMMANDS`. Handlers take the parsed arguments and return an exit status.
Heavy imports (torch, training code) belong inside handlers so ``embedplug --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from embedplug import registry

SubparsersAction = Any  # argparse's _SubParsersAction is private; builders only call .add_parser()


# --------------------------------------------------------------------------------------------------
# embedplug plugins


def _add_plugins_command(subparsers: SubparsersAction) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="list installed plugins and what they register",
        description="List every embedplug plugin: distribution, version, hooks, registered names and errors.",
    )
    parser.add_argument("--json", action="store_true", help="print the records as a JSON list")
    parser.set_defaults(handler=_run_plugins)


def quiet_plugin_records() -> list[dict[str, Any]]:
    """``registry.list_plugins()`` without the PluginWarnings: a command that prints the records' errors
    says each problem once, in its own words, instead of also as a warning with a registry source line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", registry.PluginWarning)
        return registry.list_plugins()


def _run_plugins(args: argparse.Namespace) -> int:
    try:
        records = quiet_plugin_records()
    except registry.PluginError as exc:  # strict mode: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(records, indent=2) if args.json else format_plugins_table(records))
    return 0


def _status(record: dict[str, Any]) -> str:
    if record["disabled"]:
        return "disabled"
    if record["errors"]:
        return f"{len(record['errors'])} error(s)"
    return "ok"


def format_plugins_table(records: list[dict[str, Any]]) -> str:
    """Plugin records as a fixed-width table, then each plugin's names and errors."""
    header = ("PLUGIN", "DISTRIBUTION", "VERSION", "LOSSES", "SAMPLERS", "STATUS")
    rows = [
        (
            record["name"],
            record["distribution"] or ("(in-process)" if record["entry_point"] is None else "(unknown)"),
            record["version"] or "-",
            str(len(_without_aliases(record, "losses"))),
            str(len(_without_aliases(record, "samplers"))),
            _status(record),
        )
        for record in records
    ]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in (header, *rows)]
    for record in records:
        details = _loss_lines(record)
        samplers = [_with_aliases(record, name) for name in _without_aliases(record, "samplers")]
        details += [f"  samplers: {', '.join(samplers)}"] if samplers else []
        details += [f"  error: {error}" for error in record["errors"]]
        if details:
            lines += ["", f"{record['name']}:", *details]
    return "\n".join(lines)


def _without_aliases(record: dict[str, Any], kind: str) -> list[str]:
    """The names of ``record[kind]`` that are not aliases: one per registered class."""
    aliases = record.get("aliases", {})
    return [name for name in record[kind] if name not in aliases]


def _with_aliases(record: dict[str, Any], name: str) -> str:
    """``Name`` or ``Name (alias a, b)``."""
    aliases = [alias for alias, target in record.get("aliases", {}).items() if target == name]
    return f"{name} (alias {', '.join(aliases)})" if aliases else name


def _loss_lines(record: dict[str, Any]) -> list[str]:
    """``losses (<implementation>): A, B (alias b)`` per implementation, in registration order."""
    implementations = record.get("implementations", {})
    groups: dict[str, list[str]] = {}
    for name in _without_aliases(record, "losses"):
        groups.setdefault(implementations.get(name, "implementation unknown"), []).append(_with_aliases(record, name))
    return [f"  losses ({implementation}): {', '.join(names)}" for implementation, names in groups.items()]


# --------------------------------------------------------------------------------------------------
# embedplug doctor


def _add_doctor_command(subparsers: SubparsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="say which implementation each op runs and why, with versions and plugins, for bug reports",
        description=(
            "Print what embedplug resolved: versions, the compiled extension and its settings, a verdict per op "
            "and device (fused, or the reference and why), and the plugins' losses by implementation."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON (machine-readable)")
    parser.set_defaults(handler=_run_doctor)


def _run_doctor(args: argparse.Namespace) -> int:
    from embedplug import doctor

    report = doctor.gather()
    # default=str: backend_info() is owned elsewhere; a stray non-JSON value must not break doctor.
    print(json.dumps(report, indent=2, default=str) if args.json else doctor.format_report(report), end="\n" if args.json else "")
    return 0


# --------------------------------------------------------------------------------------------------
# Parser and entry point

def _add_bench_command(subparsers: SubparsersAction) -> None:
    from embedplug.bench.command import add_bench_command

    add_bench_command(subparsers)


def _add_train_command(subparsers: SubparsersAction) -> None:
    from embedplug.train.command import add_train_command

    add_train_command(subparsers)


def _add_mine_command(subparsers: SubparsersAction) -> None:
    from embedplug.mining.command import add_mine_command

    add_mine_command(subparsers)


SUBCOMMANDS: dict[str, Callable[[SubparsersAction], None]] = {
    "plugins": _add_plugins_command,
    "doctor": _add_doctor_command,
    "bench": _add_bench_command,
    "train": _add_train_command,
    "mine": _add_mine_command,
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand in :data:`SUBCOMMANDS`."""
    from embedplug import __version__

    parser = argparse.ArgumentParser(
        prog="embedplug", description="Fused, plugin-based losses and batch samplers for embedding models."
    )
    parser.add_argument("--version", action="version", version=f"embedplug {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in SUBCOMMANDS.values():
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    return args.handler(args)
