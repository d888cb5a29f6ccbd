"""A brand-new plugin package that defines a rule loss in twenty lines, installed for real.

The package is written into a temporary folder (pyproject.toml with the setuptools backend, one
``embedplug`` entry point, one module), installed into the running environment (``pip install
--no-deps --no-build-isolation``, as tests/test_example_plugin.py does) and uninstalled afterwards.
Then: ``embedplug plugins`` lists its loss, the loss equals pytorch-metric-learning's in value and
gradient, ``embedplug train`` trains with it, and ``backend_info()`` says the fused kernel runs it.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch
from pair_rule_cases import assert_equal_losses, structures, well_separated

import embedplug
import embedplug.ops
from embedplug import registry

pytestmark = pytest.mark.slow

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

DISTRIBUTION = "embedplug-twenty-line-rule"
PACKAGE = "embedplug_twenty_line_rule"
PLUGIN_NAME = "twenty-line-rule"
LOSS_NAME = "TwentyLineGeneralizedLiftedStructureLoss"
LOSS_ALIAS = "twenty_line_lifted"

PYPROJECT = f"""\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "{DISTRIBUTION}"
version = "0.3.0"
requires-python = ">=3.10"
dependencies = ["embedplug"]

[project.entry-points.embedplug]
{PLUGIN_NAME} = "{PACKAGE}"

[tool.setuptools]
packages = ["{PACKAGE}"]
"""

# The whole plugin: pytorch-metric-learning's GeneralizedLiftedStructureLoss written as a rule.
PLUGIN_MODULE = f'''\
"""PML's GeneralizedLiftedStructureLoss as a pair rule: embedplug runs it, this package ships no kernel."""

import embedplug
from embedplug.losses import make_loss_class
from embedplug.pair_rules import Affine, Combine, PairRule, Reducer, Side


def generalized_lifted_structure(neg_margin: float = 1.0, pos_margin: float = 0.0) -> PairRule:
    """Per anchor [LSE_p(d_p - pos_margin) + LSE_n(neg_margin - d_n)]_+ on euclidean distances of
    normalised embeddings, the mean over all anchors."""
    return PairRule(
        positives=Side("euclidean", affine=Affine(1.0, pos_margin)),  # x = d_p - pos_margin
        negatives=Side("euclidean", affine=Affine(-1.0, neg_margin)),  # x = neg_margin - d_n
        combine=Combine("hinge_of_sum"),
        reducer=Reducer("mean"),
    )


{LOSS_NAME} = make_loss_class(generalized_lifted_structure, name="{LOSS_NAME}")


@embedplug.hookimpl
def embedplug_register_losses(register):
    register({LOSS_NAME}, aliases=("{LOSS_ALIAS}",))
'''


def run(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)


def pip(*args: str) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args)


def clean_environ(**overrides: str) -> dict[str, str]:
    """The current environment without the caller's EMBEDPLUG_* switches, plus ``overrides``."""
    return {**{key: value for key, value in os.environ.items() if not key.startswith("EMBEDPLUG_")}, **overrides}


def _forget_plugin_modules() -> None:
    for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
        del sys.modules[name]


def _fused_pair_rules_available() -> bool:
    """Whether the extension has the fused pair-rule kernel for CPU."""
    spec = embedplug.ops.SPECS.get("pair_rule_forward")
    return spec is not None and "cpu" in spec.fused_devices


@pytest.fixture(scope="module")
def installed_rule_plugin(tmp_path_factory):
    """The package written to a temporary folder and installed; uninstalled (and forgotten) afterwards."""
    source = tmp_path_factory.mktemp("rule-plugin") / DISTRIBUTION
    (source / PACKAGE).mkdir(parents=True)
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / PACKAGE / "__init__.py").write_text(PLUGIN_MODULE)
    assert len([line for line in PLUGIN_MODULE.splitlines() if line.strip()]) <= 20
    assert pip("show", DISTRIBUTION).returncode != 0, f"{DISTRIBUTION} is already installed; uninstall it first"
    result = pip("install", "--no-deps", "--no-build-isolation", str(source))
    assert result.returncode == 0, result.stdout + result.stderr
    importlib.invalidate_caches()  # this process imports the package from site-packages below
    try:
        yield source
    finally:
        pip("uninstall", "--yes", DISTRIBUTION)
        _forget_plugin_modules()
        importlib.invalidate_caches()
        registry.reset_registry()


@pytest.fixture
def rule_loss(installed_rule_plugin, fresh_registry):
    """The loss class as this process's registry discovers it through the entry point."""
    return embedplug.get_loss(LOSS_NAME)


def test_the_installed_rule_loss_is_listed_by_embedplug_plugins(installed_rule_plugin):
    # A fresh interpreter, strict: a problem with any plugin fails instead of warning.
    command = (sys.executable, "-m", "embedplug", "plugins", "--json")
    result = run(*command, env=clean_environ(EMBEDPLUG_STRICT_PLUGINS="1"))
    assert result.returncode == 0, result.stderr
    [record] = [record for record in json.loads(result.stdout) if record["distribution"] == DISTRIBUTION]
    assert record["name"] == PLUGIN_NAME and record["version"] == "0.3.0" and record["entry_point"] == PACKAGE
    assert record["losses"] == [LOSS_NAME, LOSS_ALIAS]
    assert record["errors"] == [] and not record["disabled"]
    table = run(sys.executable, "-m", "embedplug", "plugins", env=clean_environ())
    assert table.returncode == 0, table.stderr
    [row] = [line.split() for line in table.stdout.splitlines() if line.startswith(f"{PLUGIN_NAME} ")]
    assert row == [PLUGIN_NAME, DISTRIBUTION, "0.3.0", "1", "0", "ok"]


def test_the_registry_finds_the_class_the_package_defines(rule_loss):
    assert rule_loss.__module__ == PACKAGE and rule_loss.__name__ == LOSS_NAME
    assert embedplug.get_loss(LOSS_ALIAS) is rule_loss
    assert rule_loss.embedplug_label_aware
    loss = rule_loss(None, neg_margin=0.8)
    assert loss.get_config_dict() == {"neg_margin": 0.8, "pos_margin": 0.0}


def test_backend_info_on_cpu_says_fused(rule_loss):
    assert _fused_pair_rules_available()
    assert rule_loss(None).backend_info("cpu")["implementation"] == "fused"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("margins", [{}, {"neg_margin": 0.6, "pos_margin": 0.1}], ids=["defaults", "margins"])
def test_the_installed_rule_loss_equals_pytorch_metric_learning(rule_loss, dtype, margins):
    loss = rule_loss(None, **margins)
    ours = lambda x, y: loss.compute_loss_from_embeddings([x], y)
    theirs = pml_losses.GeneralizedLiftedStructureLoss(**margins)
    generator = torch.Generator().manual_seed(23)
    # Up to 25 rows torch.cdist takes exact differences and a distance rule takes the reference; 40 and
    # 64 rows run the kernel.
    for n in (2, 5, 24, 40, 64):
        for name, labels in structures(n, generator).items():
            embeddings = torch.randn(n, 8, generator=generator, dtype=dtype)
            assert_equal_losses(ours, theirs, embeddings, labels, f"n={n} {name}")
            assert_equal_losses(ours, theirs, well_separated(labels, 8, dtype, generator), labels, f"separated {name}")


def test_embedplug_train_trains_with_the_installed_rule_loss(rule_loss, tmp_path, monkeypatch, capsys):
    from train.wordnet_run_helpers import small_wordnet, supersense_config

    from embedplug.cli import main
    from embedplug.train.resume import METRICS_FILE

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    overrides = [f"loss.name='{LOSS_ALIAS}'", "loss.options={neg_margin=0.8}"]
    assert main(["train", str(config), "--no-progress", *[f"--set={item}" for item in overrides]]) == 0
    assert f"loss backend: {PACKAGE}.{LOSS_NAME}" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    assert metrics["loss"] == LOSS_ALIAS and metrics["global_step"] == 2
    assert metrics["config"]["loss"]["options"] == {"neg_margin": 0.8}
