"""`EMBEDPLUG_NO_EXT=1` installs without a compiler, and the result runs on the reference path."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_without_extension_installs_and_falls_back(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", "build", "*.so", ".git", "__pycache__", "*.egg-info"))
    env = {**os.environ, "EMBEDPLUG_NO_EXT": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
        env=env, check=True, capture_output=True, text=True,
    )
    (wheel,) = (tmp_path / "dist").glob("embedplug-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(name.endswith(".so") for name in names)
    assert "embedplug/functional/batch_hard.py" in names
    # Unpack the wheel and import it in place of the checkout: no _C, so a warning and the reference.
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    script = (
        # A development venv has embedplug installed editable; its finder would hand out the
        # checkout's _C. Drop it so that the unpacked wheel is all there is, as on a user's machine.
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')]\n"
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import embedplug\n"
        "assert embedplug.__file__.startswith(%r), embedplug.__file__\n"
        "assert any('could not be loaded' in str(w.message) for w in caught)\n"
        "from embedplug.functional import batch_hard_triplet_loss\n"
        "x = torch.randn(16, 4, requires_grad=True)\n"
        "batch_hard_triplet_loss(x, torch.arange(16) // 4).backward()\n"
        "info = embedplug.backend_info()['ops']['batch_hard_mining']['cpu']\n"
        "assert info['implementation'] == 'reference', info\n"
        "print('ok', info['reason'])\n" % str(target)
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path,
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "extension not loaded" in result.stdout
