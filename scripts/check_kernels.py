"""Fails unless every op declared in csrc/embedplug.cpp has a kernel for each requested dispatch key.

    python scripts/check_kernels.py [--library PATH/_C.so] [--dispatch-key CPU] [--dispatch-key CUDA]

With --library, that compiled extension is imported as ``embedplug._C`` from its file (the CUDA build
lives outside the source tree, so that it never replaces the in-place CPU build); otherwise the
installed ``embedplug`` is imported. Registration needs no GPU: loading the library registers every
kernel it contains with the dispatcher.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMA_FILE = ROOT / "csrc" / "embedplug.cpp"

# m.def("name(...) -> ...") with the schema string possibly starting on the next line.
_DEFINITION = re.compile(r'm\.def\(\s*"([A-Za-z_][A-Za-z_0-9]*)\(')


def schema_ops(schema_file: pathlib.Path = SCHEMA_FILE) -> list[str]:
    """Names of the ops declared with m.def in the schema file, in file order."""
    names = _DEFINITION.findall(schema_file.read_text())
    if not names:
        raise RuntimeError(f"no m.def(...) op declarations found in {schema_file}")
    return names


def import_extension(library: str | None) -> dict:
    """Imports the extension (registering its kernels) and returns its build_info()."""
    if library is None:
        from embedplug import _extension

        if not _extension.STATUS.loaded:
            raise RuntimeError(f"embedplug._C is not loaded: {_extension.STATUS.reason}")
        return dict(_extension.STATUS.build_info)
    import torch  # noqa: F401  (the extension links against torch's libraries)

    spec = importlib.util.spec_from_file_location("embedplug._C", library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.build_info())


def _defined(op: str) -> bool:
    """Whether the loaded library defines the schema of embedplug::op."""
    import torch

    try:
        torch._C._dispatch_has_kernel_for_dispatch_key(f"embedplug::{op}", "CPU")
    except RuntimeError:
        return False
    return True


def missing_kernels(ops: list[str], dispatch_key: str) -> list[str]:
    import torch

    return [op for op in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"embedplug::{op}", dispatch_key)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", help="path of a compiled embedplug/_C*.so to import instead of the installed one")
    parser.add_argument("--dispatch-key", action="append", default=None, help="CPU and/or CUDA (default: CPU)")
    arguments = parser.parse_args(argv)
    keys = arguments.dispatch_key or ["CPU"]
    ops = schema_ops()
    info = import_extension(arguments.library)
    summary = {key: value for key, value in info.items() if key != "parallel_backend"}
    print(f"embedplug._C: {arguments.library or 'installed'}; build_info: {summary}")
    undefined = [op for op in ops if not _defined(op)]
    if undefined:
        print(f"error: {len(undefined)} of {len(ops)} ops in {SCHEMA_FILE.name} are not defined by this library "
              f"(built from an older schema?): {', '.join(undefined)}")
        return 1
    failed = False
    for key in keys:
        missing = missing_kernels(ops, key)
        for op in ops:
            print(f"  {key:4} {'ok     ' if op not in missing else 'MISSING'} embedplug::{op}")
        if missing:
            failed = True
            print(f"error: {len(missing)} of {len(ops)} ops in {SCHEMA_FILE.name} have no {key} kernel: {', '.join(missing)}")
    if not failed:
        print(f"all {len(ops)} ops in {SCHEMA_FILE.name} have {' and '.join(keys)} kernels")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
