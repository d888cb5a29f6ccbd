"""The example plugin's rule-defined LiftedStructureLoss equals pytorch-metric-learning's, is what
its hook registers, and is the rule docs/writing-a-plugin.md shows in "A fused loss in twenty lines".

The plugin is imported from its source tree (installing it is tests/test_example_plugin.py's slow job).
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from pair_rule_cases import assert_equal_losses, duplicates, structures, well_separated

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

REPO = Path(__file__).resolve().parents[2]
PLUGIN_SOURCE = REPO / "plugins" / "embedplug-example" / "src"
PLUGIN_DOC = REPO / "docs" / "writing-a-plugin.md"


@pytest.fixture(scope="module")
def example():
    """``embedplug_example`` from the source tree (an installed copy would shadow it otherwise)."""
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "embedplug_example"}
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(PLUGIN_SOURCE))
    try:
        yield importlib.import_module("embedplug_example")
    finally:
        sys.path.remove(str(PLUGIN_SOURCE))
        for name in [name for name in sys.modules if name.split(".")[0] == "embedplug_example"]:
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("margins", [{}, {"neg_margin": 0.6, "pos_margin": 0.2}], ids=["defaults", "margins"])
def test_example_lifted_structure_equals_pytorch_metric_learning(example, dtype, margins):
    loss = example.ExampleLiftedStructureLoss(None, **margins)
    ours = lambda x, y: loss.compute_loss_from_embeddings([x], y)  # noqa: E731
    theirs = pml_losses.LiftedStructureLoss(**margins)
    generator = torch.Generator().manual_seed(19)
    for n in (1, 2, 5, 40):
        for name, labels in structures(n, generator).items():
            assert_equal_losses(
                ours, theirs, torch.randn(n, 8, generator=generator, dtype=dtype), labels, f"n={n} {name}"
            )
            assert_equal_losses(ours, theirs, well_separated(labels, 8, dtype, generator), labels, f"separated {name}")
    for labels in (torch.randint(0, 4, (32,), generator=generator), torch.arange(32) // 4):
        assert_equal_losses(ours, theirs, duplicates(32, 8, dtype, generator), labels, "duplicates")


def test_the_plugin_hook_registers_the_rule_loss(example):
    registered = []
    plugin = importlib.import_module("embedplug_example.plugin")
    plugin.embedplug_register_losses(lambda cls, name=None, aliases=(): registered.append((cls, aliases)))
    assert (example.ExampleLiftedStructureLoss, ("example_lifted_structure",)) in registered
    cls = example.ExampleLiftedStructureLoss
    assert cls.__module__ == "embedplug_example.lifted_structure" and cls.embedplug_label_aware
    assert cls(None).backend_info()["implementation"] == "fused"


def _documented_source() -> str:
    section = PLUGIN_DOC.read_text().split("### A fused loss in twenty lines", 1)[1]
    return re.search(r"^`src/my_plugin/lifted_structure\.py`:\n\n```python\n(.*?)```", section, re.S | re.M).group(1)


def _documented_module() -> types.ModuleType:
    module = types.ModuleType("my_plugin.lifted_structure")
    exec(compile(_documented_source(), "writing-a-plugin.md", "exec"), module.__dict__)
    return module


def _rule_and_class_lines() -> list[str]:
    """The documented rule and class, without the imports, the docstring and blank lines."""
    body = "def lifted_structure" + _documented_source().split("def lifted_structure", 1)[1]
    return [line for line in re.sub(r'"""(.*?)"""', "", body, flags=re.S).splitlines() if line.strip()]


def test_the_documented_twenty_lines_are_the_example_and_equal_pytorch_metric_learning(example):
    documented = _documented_module()
    assert len(_rule_and_class_lines()) <= 20
    for margins in ({}, {"neg_margin": 0.5, "pos_margin": 0.1}):
        assert documented.lifted_structure(**margins) == example.lifted_structure(**margins)
    loss = documented.LiftedStructureLoss(None)
    assert loss.get_config_dict() == {"neg_margin": 1.0, "pos_margin": 0.0}
    embeddings, labels = torch.randn(12, 6, dtype=torch.float64), torch.arange(12) // 3
    assert_equal_losses(
        lambda x, y: loss.compute_loss_from_embeddings([x], y), pml_losses.LiftedStructureLoss(), embeddings, labels
    )
