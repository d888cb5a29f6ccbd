"""The built-in ``sentence-transformers`` plugin: every loss sentence-transformers exports, by name,
with embedplug's drop-ins winning, and the implementation of every loss reported."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import subprocess
import sys
import warnings

import pytest
import torch

import embedplug
from embedplug import registry
from embedplug.implementations import FUSED, SENTENCE_TRANSFORMERS, TORCH
from embedplug.registry import PluginWarning, UnknownNameError

pytestmark = pytest.mark.usefixtures("fresh_registry")
st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")


def exported_losses() -> dict[str, type]:
    """What sentence-transformers 6.2 exports, read here independently of the plugin's own code."""
    return {
        name: getattr(st_losses, name)
        for name in st_losses.__all__
        if inspect.isclass(getattr(st_losses, name)) and issubclass(getattr(st_losses, name), torch.nn.Module)
    }


def records() -> dict[str, dict]:
    return {record["name"]: record for record in registry.list_plugins()}


def test_every_exported_sentence_transformers_loss_is_registered_with_its_implementation():
    from embedplug.losses import BUILTIN_LOSSES

    ours = {cls.__name__: cls for cls in BUILTIN_LOSSES}
    by_name = records()
    for name, st_class in exported_losses().items():
        found = embedplug.get_loss(name)
        if name in ours:
            assert found is ours[name], name
            assert by_name["embedplug"]["implementations"][name] in {FUSED, TORCH}
            assert name not in by_name["sentence-transformers"]["losses"]
        else:
            assert found is st_class, name
            assert by_name["sentence-transformers"]["implementations"][name] == SENTENCE_TRANSFORMERS
    # The wrappers and the ones the issue names are among them.
    for name in ("MatryoshkaLoss", "Matryoshka2dLoss", "AdaptiveLayerLoss", "CoSENTLoss", "SoftmaxLoss"):
        assert embedplug.get_loss(name).__module__.startswith("sentence_transformers.")
    assert by_name["embedplug"]["implementations"]["TripletLoss"] == TORCH
    assert by_name["embedplug"]["implementations"]["BatchHardTripletLoss"] == FUSED


def test_a_clean_install_loads_without_conflicts_even_in_strict_mode(monkeypatch):
    monkeypatch.setenv(registry.STRICT_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        by_name = records()
    assert by_name["sentence-transformers"]["errors"] == by_name["embedplug"]["errors"] == []
    record = by_name["sentence-transformers"]
    assert record["distribution"] == "sentence-transformers"
    assert record["version"] == importlib.metadata.version("sentence-transformers")
    assert record["entry_point"] == "embedplug._st_plugin"
    assert set(record["implementations"]) == set(record["losses"])
    assert list(by_name)[:2] == ["embedplug", "sentence-transformers"]


def test_an_embedplug_drop_in_wins_over_sentence_transformers_without_a_warning(monkeypatch):
    from embedplug.losses import BUILTIN_LOSSES

    class CoSENTLoss(torch.nn.Module):  # stands in for a future embedplug drop-in of that name
        embedplug_implementation = FUSED

    monkeypatch.setattr("embedplug.losses.BUILTIN_LOSSES", (*BUILTIN_LOSSES, CoSENTLoss))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        assert embedplug.get_loss("CoSENTLoss") is CoSENTLoss
    assert "CoSENTLoss" not in records()["sentence-transformers"]["losses"]
    assert records()["embedplug"]["implementations"]["CoSENTLoss"] == FUSED


def test_not_loaded_when_sentence_transformers_is_not_importable(monkeypatch):
    monkeypatch.setattr("embedplug._st_plugin.EMBEDPLUG_REQUIRES", ("sentence_transformers_is_not_installed_here",))
    assert "sentence-transformers" not in records()
    with pytest.raises(UnknownNameError, match="no loss named 'CoSENTLoss'"):
        embedplug.get_loss("CoSENTLoss")
    assert embedplug.get_loss("BatchHardTripletLoss").__module__.startswith("embedplug.")


def test_can_be_disabled_unlike_the_builtin(monkeypatch):
    monkeypatch.setenv(registry.DISABLE_ENV, "sentence-transformers")
    record = records()["sentence-transformers"]
    assert record["disabled"] and record["losses"] == []
    with pytest.raises(UnknownNameError):
        embedplug.get_loss("MatryoshkaLoss")


def test_loaded_even_when_installed_metadata_predates_the_entry_point(monkeypatch):
    # E.g. a source checkout on PYTHONPATH with an older embedplug installed: only the first entry point.
    builtin = [ep for ep in registry._iter_entry_points() if ep.value == "embedplug._builtin_plugin"]
    assert [ep.dist.name for ep in builtin] == ["embedplug"]
    monkeypatch.setattr(registry, "_iter_entry_points", lambda: builtin)
    assert embedplug.get_loss("AnglELoss") is st_losses.AnglELoss
    assert [record["name"] for record in registry.list_plugins()] == ["embedplug", "sentence-transformers"]


def test_a_third_party_plugin_cannot_take_a_sentence_transformers_name():
    class Impostor(torch.nn.Module):
        pass

    class Plugin:
        @embedplug.hookimpl
        def embedplug_register_losses(self, register):
            register(Impostor, name="CoSENTLoss", aliases=["impostor"])

    with pytest.warns(PluginWarning, match="'CoSENTLoss' is already registered by distribution 'sentence-transformers'"):
        registry.add_plugin(Plugin(), name="impostor", distribution="impostor-dist")
    try:
        assert embedplug.get_loss("CoSENTLoss") is st_losses.CoSENTLoss
        assert embedplug.get_loss("impostor") is Impostor
        assert records()["impostor"]["implementations"] == {"impostor": f"plugin {Impostor.__module__.split('.')[0]}"}
    finally:
        registry.remove_plugin("impostor")


def test_plugins_command_groups_losses_by_implementation():
    result = subprocess.run(
        [sys.executable, "-m", "embedplug", "plugins"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].split()[:2] == ["sentence-transformers", "sentence-transformers"]
    assert any(line.startswith("  losses (embedplug fused kernel): ") and "BatchHardTripletLoss" in line for line in lines)
    assert any(line.startswith("  losses (embedplug torch): TripletLoss") for line in lines)
    st_line = next(line for line in lines if line.startswith("  losses (sentence-transformers): "))
    assert "MatryoshkaLoss" in st_line and "CoSENTLoss" in st_line and "GISTEmbedLoss" not in st_line


def test_readme_lists_every_registered_loss_with_its_implementation():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Every registered loss and its implementation", 1)[1].split("\n### ", 1)[0]
    for record in registry.list_plugins():
        for name in record["losses"]:
            row = next((line for line in section.splitlines() if f"`{name}`" in line), None)
            assert row is not None, f"README's loss table lacks {name}"
            assert f"| {record['implementations'][name]} |" in row, name
