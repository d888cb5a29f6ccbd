"""plugins/embedplug-example, installed for real: discovered through its entry point, its own tests pass.

Installs the package into the running environment (``pip install --no-deps --no-build-isolation``) and
uninstalls it afterwards. Discovery is checked in fresh interpreters, where nothing is cached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "embedplug-example"
PLUGIN_PROJECT = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())["project"]
DISTRIBUTION = PLUGIN_PROJECT["name"]


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)


def clean_environ(**overrides: str) -> dict[str, str]:
    """The current environment without the caller's EMBEDPLUG_* switches, plus ``overrides``."""
    return {**{key: value for key, value in os.environ.items() if not key.startswith("EMBEDPLUG_")}, **overrides}


def pip(*args: str) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args)


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """The example plugin installed from a copy (building in place would litter the checkout)."""
    source = tmp_path_factory.mktemp("plugin") / PLUGIN_DIR.name
    build_outputs = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache")
    shutil.copytree(PLUGIN_DIR, source, ignore=build_outputs)
    # Someone's own install of the example must survive this test; only remove what we added.
    was_installed = pip("show", DISTRIBUTION).returncode == 0
    result = pip("install", "--no-deps", "--no-build-isolation", str(source))
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        yield source
    finally:
        if not was_installed:
            pip("uninstall", "--yes", DISTRIBUTION)


def test_example_is_discovered_through_its_entry_point(installed_example):
    script = """
        import json
        import embedplug
        loss, sampler = embedplug.get_loss("ExampleSupConLoss"), embedplug.get_sampler("SeededShuffleBatchSampler")
        print(json.dumps({
            "loss": f"{loss.__module__}.{loss.__qualname__}",
            "alias": embedplug.get_loss("example_supcon") is loss,
            "sampler": f"{sampler.__module__}.{sampler.__qualname__}",
            "records": embedplug.list_plugins(),
        }))
    """
    # Strict: any plugin problem in this environment fails the test instead of only warning.
    result = run(sys.executable, "-c", textwrap.dedent(script), env=clean_environ(EMBEDPLUG_STRICT_PLUGINS="1"))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["loss"] == "embedplug_example.loss.ExampleSupConLoss"
    assert found["alias"] is True
    assert found["sampler"] == "embedplug_example.sampler.SeededShuffleBatchSampler"
    [record] = [record for record in found["records"] if record["distribution"] == DISTRIBUTION]
    assert record["name"] == "example"
    assert record["version"] == PLUGIN_PROJECT["version"]
    assert record["entry_point"] == "embedplug_example.plugin"
    assert record["losses"] == ["ExampleSupConLoss", "example_supcon", "ExampleLiftedStructureLoss", "example_lifted_structure"]
    assert record["samplers"] == ["SeededShuffleBatchSampler", "seeded_shuffle"]
    assert found["records"][0]["distribution"] == "embedplug"  # built-ins still load first


def test_example_is_listed_by_the_cli(installed_example):
    result = run(sys.executable, "-m", "embedplug", "plugins", env=clean_environ())
    assert result.returncode == 0, result.stderr
    [row] = [line.split() for line in result.stdout.splitlines() if line.startswith("example ")]
    assert row == ["example", DISTRIBUTION, PLUGIN_PROJECT["version"], "2", "1", "ok"]  # classes, not aliases


def test_example_can_be_disabled(installed_example):
    script = "import embedplug; print(embedplug.get_loss('ExampleSupConLoss'))"
    result = run(sys.executable, "-c", script, env=clean_environ(EMBEDPLUG_DISABLE_PLUGINS=DISTRIBUTION))
    assert result.returncode != 0
    assert "no loss named 'ExampleSupConLoss'" in result.stderr


def test_example_own_tests_pass(installed_example):
    # Run from the copy: its src/ is not on sys.path, so the tests exercise the installed package.
    result = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=installed_example)
    assert result.returncode == 0, result.stdout + result.stderr
