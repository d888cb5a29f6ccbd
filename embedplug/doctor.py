"""``embedplug doctor``: what embedplug resolved on this machine, gathered as data, then written for people.

:func:`gather` collects a JSON-able report (``embedplug doctor --json`` prints it as it is) from the
functions that own the facts (:func:`embedplug.backend_info`, :func:`embedplug.list_plugins`, torch);
:func:`format_report` turns such a report into the readable text ``embedplug doctor`` prints: versions,
the compiled extension and its settings, a verdict per op and device with its cause, and the plugins'
losses by implementation. Gathering never raises: doctor is what users run when something is broken.
"""

from __future__ import annotations

import importlib.metadata
import platform
import textwrap
import warnings
from typing import Any

# A plugin's loss names are listed up to this many per implementation; above it, counted.
_MAX_LISTED_NAMES = 20
_WIDTH = 110


# --------------------------------------------------------------------------------------------------
# Gathering


def gather() -> dict[str, Any]:
    """The report: ``embedplug``, ``python``, ``torch`` (version), ``torch_cuda`` (the CUDA version torch
    was built with, None for a CPU-only build), ``sentence_transformers`` (version or None), ``backend``
    (:func:`embedplug.backend_info`, or ``{"error": ...}``) and ``plugins`` (one summary per plugin, or
    an ``"error: ..."`` string)."""
    from embedplug import __version__

    torch_version, torch_cuda = _torch_versions()
    return {
        "embedplug": __version__,
        "python": platform.python_version(),
        "torch": torch_version,
        "torch_cuda": torch_cuda,
        "sentence_transformers": _distribution_version("sentence-transformers"),
        "backend": _backend_info(),
        "plugins": _plugins_summary(),
    }


def _torch_versions() -> tuple[str, str | None]:
    try:
        import torch
    except Exception as exc:
        return f"unavailable ({type(exc).__name__}: {exc})", None
    return torch.__version__, torch.version.cuda


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _backend_info() -> dict[str, Any]:
    try:
        from embedplug import backend_info

        return backend_info()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _plugins_summary() -> list[dict[str, Any]] | str:
    from embedplug import registry

    try:
        with warnings.catch_warnings():  # the problems are in the records, reported once below
            warnings.simplefilter("ignore", registry.PluginWarning)
            records = registry.list_plugins()
    except registry.PluginError as exc:
        return f"error: {exc}"
    summaries = []
    for record in records:
        aliases = record.get("aliases", {})
        losses = [name for name in record["losses"] if name not in aliases]
        by_implementation: dict[str, list[str]] = {}
        for name in losses:
            by_implementation.setdefault(record["implementations"].get(name, "unknown"), []).append(name)
        summaries.append(
            {
                "name": record["name"],
                "distribution": record["distribution"],
                "version": record["version"],
                "losses": len(losses),
                "samplers": len([name for name in record["samplers"] if name not in aliases]),
                "errors": record["errors"],
                "disabled": record["disabled"],
                "implementations": by_implementation,
            }
        )
    return summaries


# --------------------------------------------------------------------------------------------------
# Formatting


def format_report(report: dict[str, Any]) -> str:
    """The readable text of a :func:`gather` report."""
    sections = [_versions(report), _extension(report), _ops(report), _plugins(report)]
    return "\n\n".join(section for section in sections if section) + "\n"


def _versions(report: dict[str, Any]) -> str:
    torch_build = "CPU-only build" if report.get("torch_cuda") is None else f"CUDA {report['torch_cuda']}"
    st = report.get("sentence_transformers")
    followed = report.get("backend", {}).get("sentence_transformers", {})
    follows = ""
    if followed.get("follows"):
        exact = "" if followed.get("exact", True) else ", the nearest release embedplug knows"
        follows = f"; the drop-in losses follow sentence-transformers {followed['follows']}{exact}"
    return (
        f"embedplug {report['embedplug']}, Python {report['python']}, torch {report['torch']} ({torch_build}), "
        f"sentence-transformers {st or 'not installed'}{follows}"
    )


def _extension(report: dict[str, Any]) -> str:
    backend = report.get("backend", {})
    if "error" in backend:
        return f"compiled extension: unknown, backend_info() failed: {backend['error']}"
    extension = backend.get("extension", {})
    if not extension.get("loaded"):
        reason = extension.get("reason")
        return f"compiled extension (embedplug._C): not loaded ({reason}); every op runs its pure-torch reference"
    build = [
        f"built with torch {extension.get('compiled_with_torch', '?')}",
        f"compiler {extension.get('compiler', '?')}",
        f"OpenMP {'on' if extension.get('openmp') else 'off'}",
        "CUDA kernels" if extension.get("cuda_kernels") else "no CUDA kernels",
    ]
    lines = ["compiled extension (embedplug._C): loaded", f"  {', '.join(build)}"]
    settings = extension.get("parallel_backend")
    if settings:
        lines.append("  parallel settings:")
        lines += [f"    {line.replace(chr(9), '  ').rstrip()}" for line in str(settings).strip().splitlines()]
    return "\n".join(lines)


def op_verdict(report: dict[str, Any], entry: dict[str, Any], device: str) -> str:
    """``"fused"`` or ``"reference: <cause>"`` for one op on ``device`` ("cpu" or "cuda"), the cause in a
    user's terms: a CPU-only torch, no CUDA device, an extension built without CUDA kernels, ..."""
    backend = report["backend"]
    extension = backend.get("extension", {})
    cuda_usable = device != "cuda" or backend.get("cuda_available", False)
    if entry.get("implementation") == "fused":
        return "fused" if cuda_usable else "fused kernel built, but no CUDA device is visible"
    if device == "cuda" and report.get("torch_cuda") is None:
        return "reference: CPU-only torch"
    if not extension.get("loaded"):
        return "reference: extension not loaded"
    if device == "cuda" and not extension.get("cuda_kernels"):
        return "reference: extension built without CUDA kernels"
    reason = str(entry.get("reason", "")).removeprefix("pure-torch reference: ")
    return f"reference: {reason}" if reason else "reference"


def _ops(report: dict[str, Any]) -> str:
    backend = report.get("backend", {})
    ops = backend.get("ops")
    if not ops:
        return ""
    rows = [("OP", "CPU", "CUDA")]
    rows += [
        (op, op_verdict(report, devices["cpu"], "cpu"), op_verdict(report, devices["cuda"], "cuda"))
        for op, devices in ops.items()
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    lines = [f"  {row[0].ljust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}".rstrip() for row in rows]
    return "\n".join(["which implementation each op runs:", *lines])


def _plugins(report: dict[str, Any]) -> str:
    plugins = report.get("plugins")
    if isinstance(plugins, str):
        return f"plugins: {plugins}"
    lines = ["plugins (`embedplug plugins` lists every name):"]
    for plugin in plugins or []:
        who = plugin["distribution"] or plugin["name"]
        version = f" {plugin['version']}" if plugin["version"] else ""
        if plugin["disabled"]:
            lines.append(f"  {who}{version}: disabled")
            continue
        status = f"{len(plugin['errors'])} error(s)" if plugin["errors"] else "ok"
        lines.append(f"  {who}{version}: {status}, {plugin['losses']} losses, {plugin['samplers']} samplers")
        for implementation, names in plugin.get("implementations", {}).items():
            listed = ", ".join(names) if len(names) <= _MAX_LISTED_NAMES else f"{len(names)} losses"
            lines.append(textwrap.fill(f"{implementation}: {listed}", _WIDTH, initial_indent="    ", subsequent_indent="      "))
        lines += [f"    error: {error}" for error in plugin["errors"]]
    return "\n".join(lines)
