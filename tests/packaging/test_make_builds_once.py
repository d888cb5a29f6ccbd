"""A fresh clone's `make test` compiles embedplug._C once, and `make ext` rebuilds after any csrc/ edit.

Checked without compiling: `make -n` lists the commands a fresh clone runs, and setup.py is run with
setuptools' `setup` replaced, to read the extension it declares.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_fresh_clone_compiles_the_extension_once(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    (tmp_path / "pyproject.toml").touch()
    (tmp_path / "setup.py").touch()
    dry_run = subprocess.run(
        ["make", "-n", "test", f"PYTHON={sys.executable}"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    editable_installs = [line for line in dry_run if "pip install" in line and " -e " in line]
    builds = [line for line in dry_run if "build_ext" in line]
    # The editable install registers the package without compiling; build_ext is the one compile.
    assert editable_installs and all(line.startswith("EMBEDPLUG_NO_EXT=1 ") for line in editable_installs), dry_run
    assert len(builds) == 1 and "--inplace" in builds[0], dry_run


def test_the_extension_depends_on_every_header_so_make_ext_rebuilds_after_a_header_edit():
    pytest.importorskip("torch.utils.cpp_extension")
    script = (
        "import json, runpy, setuptools\n"
        "captured = {}\n"
        "setuptools.setup = lambda **kwargs: captured.update(kwargs)\n"
        "runpy.run_path('setup.py')\n"
        "[extension] = captured['ext_modules']\n"
        "print(json.dumps({'sources': extension.sources, 'depends': extension.depends}))\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "EMBEDPLUG_NO_EXT"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, env=environment
    )
    declared = json.loads(result.stdout.splitlines()[-1])
    headers = {path for pattern in ("*.h", "*.cuh") for path in glob.glob(f"csrc/**/{pattern}", root_dir=ROOT, recursive=True)}
    assert headers and headers <= set(declared["depends"])
