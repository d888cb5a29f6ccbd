"""The plugin registry: discovery, lazy loading, lookups, failure isolation, conflicts and switches.

Installed plugins are faked without pip: each fake distribution is a module in ``tmp_path`` on
``sys.path`` plus a ``*.dist-info`` directory (METADATA, entry_points.txt) elsewhere, and
``registry._iter_entry_points`` is patched to return the real built-in entry point and the fakes.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import itertools
import json
import re
import subprocess
import sys
import textwrap
import tomllib
import types
import warnings
from pathlib import Path

import pytest
import torch

import embedplug
from embedplug import hookspecs, registry
from embedplug.registry import PluginError, PluginWarning, UnknownNameError

REPO_ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DOC = REPO_ROOT / "docs" / "writing-a-plugin.md"

_module_counter = itertools.count()


# Every test starts and ends with an unloaded process-wide registry and no plugin switches set.
pytestmark = pytest.mark.usefixtures("fresh_registry")


class FakeSite:
    """Creates fake installed distributions whose entry points the registry sees."""

    def __init__(self, root: Path) -> None:
        self.modules_dir = root / "site"
        self.metadata_dir = root / "metadata"
        self.modules_dir.mkdir()
        self.metadata_dir.mkdir()
        self.entry_points: list[importlib.metadata.EntryPoint] = []
        self.module_names: list[str] = []

    def add(self, distribution: str, source: str = "", *, entry_point: str | None = None, version: str = "1.0") -> str:
        """Add ``distribution`` with one plugin module holding ``source``; returns the module name."""
        module_name = f"fake_embedplug_plugin_{next(_module_counter)}"
        (self.modules_dir / f"{module_name}.py").write_text(textwrap.dedent(source))
        self.module_names.append(module_name)
        self.add_metadata(distribution, version, {entry_point or module_name: module_name})
        return module_name

    def add_metadata(self, distribution: str, version: str, entry_points: dict[str, str]) -> None:
        info = self.metadata_dir / f"{distribution.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
        lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[embedplug]\n{lines}")
        self.entry_points.extend(importlib.metadata.PathDistribution(info).entry_points.select(group="embedplug"))
        importlib.invalidate_caches()  # new files in a directory the import system has already listed


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = FakeSite(tmp_path)
    monkeypatch.syspath_prepend(str(site.modules_dir))
    builtin = [ep for ep in registry._iter_entry_points() if ep.dist and ep.dist.name == "embedplug"]
    # Reversed: the registry must impose its own order, whatever order discovery returns.
    monkeypatch.setattr(registry, "_iter_entry_points", lambda: [*reversed(site.entry_points), *builtin])
    yield site
    for module_name in site.module_names:
        sys.modules.pop(module_name, None)


@pytest.fixture
def throwaway_plugin():
    """An in-process plugin registering one loss and one sampler, removed afterwards."""

    class SupervisedContrastiveLoss(torch.nn.Module):
        pass

    class ThrowawayBatchSampler(torch.utils.data.BatchSampler):
        pass

    class Plugin:
        loss = SupervisedContrastiveLoss
        sampler = ThrowawayBatchSampler

        @embedplug.hookimpl
        def embedplug_register_losses(self, register):
            register(SupervisedContrastiveLoss, aliases=["supcon-throwaway"])

        @embedplug.hookimpl
        def embedplug_register_samplers(self, register):
            register(ThrowawayBatchSampler)

    plugin = Plugin()
    registry.add_plugin(plugin, name="throwaway", distribution="throwaway-dist", version="9.9")
    yield plugin
    registry.remove_plugin("throwaway")


def record_for(distribution: str) -> dict:
    [record] = [record for record in registry.list_plugins() if record["distribution"] == distribution]
    return record


GOOD_PLUGIN = """
    import torch
    import embedplug

    class GoodLoss(torch.nn.Module):
        pass

    class GoodBatchSampler(torch.utils.data.BatchSampler):
        pass

    @embedplug.hookimpl
    def embedplug_register_losses(register):
        register(GoodLoss, aliases=("good",))

    @embedplug.hookimpl
    def embedplug_register_samplers(register):
        register(GoodBatchSampler)
"""


def loss_plugin(*registrations: str, preamble: str = "") -> str:
    """Source of a plugin whose loss hook runs ``registrations`` (lines of code calling ``register``)."""
    body = "\n".join(f"    {line}" for line in registrations)
    return (
        "import torch\nimport embedplug\n\n"
        "class ALoss(torch.nn.Module):\n    pass\n\n"
        "class BLoss(torch.nn.Module):\n    pass\n\n"
        f"{textwrap.dedent(preamble)}\n"
        "@embedplug.hookimpl\ndef embedplug_register_losses(register):\n"
        f"{body}\n"
    )


# ----- discovery and laziness


def test_builtin_plugin_is_discovered_through_its_entry_point():
    entry_points = [ep for ep in registry._iter_entry_points() if ep.value == "embedplug._builtin_plugin"]
    assert [ep.dist.name for ep in entry_points] == ["embedplug"]
    record = record_for("embedplug")
    assert record["name"] == "embedplug"
    assert record["version"] == embedplug.__version__
    assert record["hooks"] == ["embedplug_register_losses", "embedplug_register_samplers"]
    assert record["errors"] == []


def test_every_builtin_class_is_registered_under_its_name():
    from embedplug.losses import BUILTIN_LOSSES
    from embedplug.samplers import BUILTIN_SAMPLERS

    for loss_class in BUILTIN_LOSSES:
        assert embedplug.get_loss(loss_class.__name__) is loss_class
    for sampler_class in BUILTIN_SAMPLERS:
        assert embedplug.get_sampler(sampler_class.__name__) is sampler_class
    record = record_for("embedplug")
    assert record["losses"] == [cls.__name__ for cls in BUILTIN_LOSSES]
    assert record["samplers"] == [cls.__name__ for cls in BUILTIN_SAMPLERS]


def test_import_embedplug_does_not_load_plugins():
    script = """
        import sys
        import embedplug
        from embedplug.registry import get_registry
        before = (get_registry().is_loaded, "embedplug._builtin_plugin" in sys.modules)
        embedplug.list_plugins()
        after = (get_registry().is_loaded, "embedplug._builtin_plugin" in sys.modules)
        print(before, after)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "(False, False) (True, True)"


def test_entry_point_plugin_is_loaded_and_attributed(fake_site):
    module_name = fake_site.add("good-dist", GOOD_PLUGIN, entry_point="good", version="2.3.4")
    good_module = importlib.import_module(module_name)
    assert embedplug.get_loss("GoodLoss") is good_module.GoodLoss
    assert embedplug.get_loss("good") is good_module.GoodLoss
    assert embedplug.get_sampler("GoodBatchSampler") is good_module.GoodBatchSampler
    assert record_for("good-dist") == {
        "name": "good",
        "distribution": "good-dist",
        "version": "2.3.4",
        "entry_point": module_name,
        "hooks": ["embedplug_register_losses", "embedplug_register_samplers"],
        "losses": ["GoodLoss", "good"],
        "samplers": ["GoodBatchSampler"],
        "errors": [],
        "disabled": False,
        "implementations": {"GoodLoss": f"plugin {module_name}", "good": f"plugin {module_name}"},
        "aliases": {"good": "GoodLoss"},
    }
    assert [record["name"] for record in registry.list_plugins()] == ["embedplug", "sentence-transformers", "good"]


def test_list_plugins_returns_copies():
    registry.list_plugins()[0]["losses"].append("Injected")
    assert "Injected" not in registry.list_plugins()[0]["losses"]


# ----- lookups


def test_unknown_name_is_a_readable_key_error_with_close_matches(throwaway_plugin):
    with pytest.raises(KeyError) as caught:
        embedplug.get_loss("SupervisedContrastivLoss")
    error = caught.value
    assert isinstance(error, UnknownNameError)
    assert error.args == ("SupervisedContrastivLoss",)
    # sentence-transformers' ContrastiveLoss & co. are registered too and may follow the best match.
    assert error.close_matches[0] == "SupervisedContrastiveLoss"
    message = str(error)
    assert message.startswith("no loss named 'SupervisedContrastivLoss'.")  # not KeyError's repr-quoting
    assert "Did you mean 'SupervisedContrastiveLoss'" in message
    assert "supcon-throwaway" in message  # the available names are listed


def test_close_matches_ignore_case(throwaway_plugin):
    with pytest.raises(UnknownNameError) as caught:
        embedplug.get_loss("supervisedcontrastiveloss")
    assert caught.value.close_matches[0] == "SupervisedContrastiveLoss"


def test_unknown_name_error_says_when_the_name_is_the_other_kind(throwaway_plugin):
    with pytest.raises(UnknownNameError, match=r"'SupervisedContrastiveLoss' is a loss: use get_loss\(\)"):
        embedplug.get_sampler("SupervisedContrastiveLoss")


def test_unknown_name_error_points_at_broken_plugins(fake_site):
    fake_site.add("broken-dist", "raise ImportError('missing dependency')")
    with pytest.warns(PluginWarning), pytest.raises(UnknownNameError, match="broken-dist.*embedplug plugins"):
        embedplug.get_loss("WhateverLoss")


def test_throwaway_plugin_is_added_and_removed(throwaway_plugin):
    assert embedplug.get_loss("supcon-throwaway") is throwaway_plugin.loss
    assert embedplug.get_sampler("ThrowawayBatchSampler") is throwaway_plugin.sampler
    record = record_for("throwaway-dist")
    assert (record["name"], record["version"], record["entry_point"]) == ("throwaway", "9.9", None)
    assert record["losses"] == ["SupervisedContrastiveLoss", "supcon-throwaway"]

    registry.remove_plugin("throwaway")
    with pytest.raises(UnknownNameError):
        embedplug.get_loss("SupervisedContrastiveLoss")
    assert "throwaway-dist" not in [record["distribution"] for record in registry.list_plugins()]
    registry.add_plugin(throwaway_plugin, name="throwaway")  # for the fixture's teardown; names are free again


def test_add_plugin_refuses_a_taken_plugin_name(throwaway_plugin):
    with pytest.raises(ValueError, match="already registered"):
        registry.add_plugin(types.SimpleNamespace(), name="throwaway")


# ----- broken plugins are reported, everyone else keeps working


def test_plugin_that_fails_to_import_is_reported(fake_site):
    fake_site.add("broken-dist", "raise ImportError('missing dependency xyz')", entry_point="broken")
    fake_site.add("good-dist", GOOD_PLUGIN)
    with pytest.warns(PluginWarning, match="'broken-dist'.*missing dependency xyz"):
        records = registry.list_plugins()
    [broken] = [record for record in records if record["name"] == "broken"]
    assert broken["distribution"] == "broken-dist"
    assert broken["errors"] == [f"import of {broken['entry_point']!r} failed: ImportError: missing dependency xyz"]
    assert embedplug.get_loss("GoodLoss").__name__ == "GoodLoss"
    assert record_for("embedplug")["errors"] == []


def test_hook_that_raises_keeps_nothing_it_registered(fake_site):
    source = loss_plugin("register(ALoss)", "raise RuntimeError('hook exploded')") + textwrap.dedent(
        """
        class CSampler(torch.utils.data.BatchSampler):
            pass

        @embedplug.hookimpl
        def embedplug_register_samplers(register):
            register(CSampler)
        """
    )
    fake_site.add("raising-dist", source)
    fake_site.add("good-dist", GOOD_PLUGIN)
    with pytest.warns(PluginWarning, match="'raising-dist'.*embedplug_register_losses raised RuntimeError"):
        record = record_for("raising-dist")
    assert record["losses"] == []
    assert record["samplers"] == ["CSampler"]  # its other hook still ran
    assert len(record["errors"]) == 1
    with pytest.raises(UnknownNameError):
        embedplug.get_loss("ALoss")
    assert embedplug.get_loss("GoodLoss").__name__ == "GoodLoss"


@pytest.mark.parametrize(
    ("registration", "problem"),
    [
        ("register(lambda model: None)", "expected a class, got function"),
        ("register(dict)", "must be a torch.nn.Module subclass"),
        ("register(ALoss, name='1starts-with-digit')", "invalid loss name '1starts-with-digit'"),
        ("register(ALoss, name='has space')", "invalid loss name 'has space'"),
        ("register(ALoss, name='')", "invalid loss name ''"),
        ("register(ALoss, name=42)", "invalid loss name 42"),
        ("register(ALoss, aliases='alias')", "aliases must be a list or tuple"),
        ("register(ALoss, aliases=7)", "aliases are not iterable"),
    ],
)
def test_malformed_loss_registration_is_refused(fake_site, registration, problem):
    fake_site.add("sloppy-dist", loss_plugin(registration, "register(BLoss)"))
    with pytest.warns(PluginWarning, match=re.escape(problem)) as caught:
        record = record_for("sloppy-dist")
    assert "'sloppy-dist'" in str(caught[0].message)
    assert len(record["errors"]) == 1 and problem in record["errors"][0]
    assert record["losses"] == ["BLoss"]  # the valid registration in the same hook stands
    assert embedplug.get_loss("BLoss").__name__ == "BLoss"


def test_sampler_without_len_is_refused(fake_site):
    source = """
        import embedplug

        class IterOnly:
            def __iter__(self):
                return iter([])

        @embedplug.hookimpl
        def embedplug_register_samplers(register):
            register(IterOnly)
    """
    fake_site.add("sampler-dist", source)
    with pytest.warns(PluginWarning, match="'sampler-dist'.*lacks __len__"):
        assert record_for("sampler-dist")["samplers"] == []


def test_unknown_and_undecorated_hooks_are_reported(fake_site):
    source = """
        import embedplug

        @embedplug.hookimpl
        def embedplug_register_loss(register):  # typo: the hook is embedplug_register_losses
            pass

        def embedplug_register_samplers(register):  # forgot @embedplug.hookimpl
            pass
    """
    fake_site.add("typo-dist", source)
    with pytest.warns(PluginWarning, match="typo-dist") as caught:
        errors = record_for("typo-dist")["errors"]
    assert len(caught) == 2
    assert "unknown hook 'embedplug_register_loss'" in errors[0]
    assert "'embedplug_register_samplers' is not decorated with @embedplug.hookimpl" in errors[1]


def test_hookimpl_with_wrong_arguments_is_reported(fake_site):
    source = """
        import embedplug

        @embedplug.hookimpl
        def embedplug_register_losses(registry):
            pass
    """
    fake_site.add("signature-dist", source)
    with pytest.warns(PluginWarning, match="'signature-dist'.*is not a valid plugin"):
        record = record_for("signature-dist")
    assert record["hooks"] == []


def test_register_cannot_be_used_after_the_hook_returned(fake_site):
    module_name = fake_site.add("late-dist", loss_plugin("global kept", "kept = register", preamble="kept = None"))
    registry.list_plugins()
    late_module = importlib.import_module(module_name)
    with pytest.raises(RuntimeError, match="after embedplug_register_losses returned"):
        late_module.kept(late_module.ALoss)


# ----- names are refused, never shadowed


def test_name_conflict_refuses_the_second_and_names_both_distributions(fake_site):
    first = fake_site.add("aaa-first", loss_plugin("register(ALoss, name='SharedLoss')"))
    fake_site.add("zzz-second", loss_plugin("register(BLoss, name='SharedLoss')"))
    with pytest.warns(PluginWarning) as caught:
        assert embedplug.get_loss("SharedLoss") is importlib.import_module(first).ALoss
    [message] = [str(warning.message) for warning in caught]
    assert "'zzz-second'" in message and "'aaa-first'" in message
    [error] = record_for("zzz-second")["errors"]
    assert "'SharedLoss' is already registered by distribution 'aaa-first'" in error
    assert "from distribution 'zzz-second'" in error
    assert record_for("aaa-first")["errors"] == []


def test_builtin_names_cannot_be_taken(fake_site, monkeypatch):
    class BuiltinLikeLoss(torch.nn.Module):
        pass

    # The built-in hook reads BUILTIN_LOSSES when called, so this stands in for a real built-in loss.
    monkeypatch.setattr("embedplug.losses.BUILTIN_LOSSES", (BuiltinLikeLoss,))
    # "aaa" sorts before "embedplug": only the built-ins-first rule protects the name.
    fake_site.add("aaa-squatter", loss_plugin("register(ALoss, name='BuiltinLikeLoss', aliases=['squat'])"))
    with pytest.warns(PluginWarning, match="'BuiltinLikeLoss' is already registered by distribution 'embedplug'"):
        assert embedplug.get_loss("BuiltinLikeLoss") is BuiltinLikeLoss
    assert embedplug.get_loss("squat").__name__ == "ALoss"  # its free alias still stands
    assert record_for("aaa-squatter")["losses"] == ["squat"]


def test_aliases_share_the_namespace(fake_site):
    fake_site.add("aaa-first", loss_plugin("register(ALoss, aliases=['short'])"))
    fake_site.add("bbb-second", loss_plugin("register(BLoss, name='short', aliases=['other'])"))
    with pytest.warns(PluginWarning, match="'short' is already registered by distribution 'aaa-first'"):
        assert embedplug.get_loss("short").__name__ == "ALoss"
    assert record_for("bbb-second")["losses"] == ["other"]


def test_losses_and_samplers_have_separate_namespaces(throwaway_plugin):
    class ThrowawayBatchSampler(torch.nn.Module):  # same name as the sampler, but a loss
        pass

    @embedplug.hookimpl
    def embedplug_register_losses(register):
        register(ThrowawayBatchSampler)

    plugin = types.SimpleNamespace(embedplug_register_losses=embedplug_register_losses)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        registry.add_plugin(plugin, name="same-name-other-kind")
    assert embedplug.get_loss("ThrowawayBatchSampler") is ThrowawayBatchSampler
    assert embedplug.get_sampler("ThrowawayBatchSampler") is throwaway_plugin.sampler


def test_same_class_same_name_twice_from_one_plugin_is_harmless(fake_site):
    registrations = ("register(ALoss)", "register(ALoss)", "register(ALoss, aliases=['ALoss'])")
    fake_site.add("repeat-dist", loss_plugin(*registrations))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = record_for("repeat-dist")
    assert record["losses"] == ["ALoss"]
    assert record["errors"] == []


def test_different_classes_under_one_name_from_one_plugin_conflict(fake_site):
    fake_site.add("confused-dist", loss_plugin("register(ALoss, name='Same')", "register(BLoss, name='Same')"))
    with pytest.warns(PluginWarning, match="'Same' is already registered by distribution 'confused-dist'"):
        assert embedplug.get_loss("Same").__name__ == "ALoss"


def test_duplicate_entry_point_names_across_distributions(fake_site):
    fake_site.add("aaa-first", GOOD_PLUGIN, entry_point="same")
    fake_site.add("bbb-second", loss_plugin("register(ALoss)"), entry_point="same")
    with pytest.warns(PluginWarning, match="plugin name 'same' is already used by distribution 'aaa-first'"):
        record = record_for("bbb-second")
    assert record["losses"] == []
    assert embedplug.get_loss("GoodLoss").__name__ == "GoodLoss"


# ----- switches


@pytest.mark.parametrize("switch", ["skipped", "Skipped_Dist", " other , skipped-dist "])
def test_disabled_plugin_is_not_imported(fake_site, monkeypatch, switch):
    module_name = fake_site.add("skipped-dist", "raise RuntimeError('must not be imported')", entry_point="skipped")
    fake_site.add("good-dist", GOOD_PLUGIN)
    monkeypatch.setenv(registry.DISABLE_ENV, switch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = record_for("skipped-dist")
    assert record["disabled"] is True
    assert record["errors"] == [] and record["hooks"] == []
    assert module_name not in sys.modules
    assert embedplug.get_loss("GoodLoss").__name__ == "GoodLoss"


def test_builtin_plugin_cannot_be_disabled(monkeypatch):
    monkeypatch.setenv(registry.DISABLE_ENV, "embedplug")
    with pytest.warns(PluginWarning, match="cannot be disabled"):
        record = record_for("embedplug")
    assert record["disabled"] is False and record["hooks"]


# ----- declarations a plugin makes about itself (embedplug.hookspecs), read the same way for every plugin


def test_a_plugin_whose_declared_requirement_is_missing_registers_nothing_and_is_not_listed(fake_site):
    fake_site.add("optional-dist", GOOD_PLUGIN + "\n    EMBEDPLUG_REQUIRES = ('a_library_that_is_not_installed',)\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "optional-dist" not in [record["distribution"] for record in registry.list_plugins()]
    with pytest.raises(UnknownNameError):
        embedplug.get_loss("GoodLoss")


def test_a_malformed_requirement_declaration_is_reported(fake_site):
    fake_site.add("odd-dist", GOOD_PLUGIN + "\n    EMBEDPLUG_REQUIRES = 42\n")
    with pytest.warns(PluginWarning, match="EMBEDPLUG_REQUIRES must be an import name"):
        assert record_for("odd-dist")["errors"]
    with pytest.raises(UnknownNameError):
        embedplug.get_loss("GoodLoss")


def test_a_plugin_declaring_an_attribution_is_reported_as_that_distribution(fake_site):
    # E.g. a plugin that registers another library's classes; here it claims pytest's.
    fake_site.add("bridge-dist", GOOD_PLUGIN + "\n    EMBEDPLUG_REQUIRES = 'pytest'\n    EMBEDPLUG_ATTRIBUTION = 'pytest'\n")
    [record] = [record for record in registry.list_plugins() if record["losses"] == ["GoodLoss", "good"]]
    assert record["distribution"] == "pytest" and record["version"] == importlib.metadata.version("pytest")
    assert record["errors"] == []


def test_the_registry_has_no_special_case_for_any_plugin():
    source = Path(registry.__file__).read_text().lower()
    assert "sentence" not in source and "_st_plugin" not in source


def test_the_shipped_entry_point_list_matches_pyproject():
    from embedplug._builtin_plugin import SHIPPED_ENTRY_POINTS

    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["embedplug"] == SHIPPED_ENTRY_POINTS
    assert next(iter(SHIPPED_ENTRY_POINTS.values())) == registry.BUILTIN_MODULE


def test_a_third_kind_of_plugin_class_is_one_table_entry(monkeypatch):
    def embedplug_register_widgets(register):
        """Register widgets. Parameters: register: the callback. Returns: None."""

    monkeypatch.setattr(hookspecs, "embedplug_register_widgets", hookspecs.hookspec(embedplug_register_widgets), raising=False)
    widgets = registry._Kind("widget", "widgets", "embedplug_register_widgets", lambda obj: None)
    monkeypatch.setattr(registry, "_KINDS", (*registry._KINDS, widgets))
    registry.reset_registry()

    class Widget:
        pass

    class Plugin:
        @embedplug.hookimpl
        def embedplug_register_widgets(self, register):
            register(Widget, aliases=["gadget"])

    record = registry.add_plugin(Plugin(), name="widget-plugin")
    assert record["widgets"] == ["Widget", "gadget"] and record["aliases"] == {"gadget": "Widget"}
    assert record["errors"] == [] and record["hooks"] == ["embedplug_register_widgets"]
    assert registry.get_registry()._lookup(widgets, "gadget") is Widget
    with pytest.raises(UnknownNameError, match="'Widget' is a widget: use get_widget"):
        embedplug.get_loss("Widget")


def test_strict_mode_raises_naming_the_distribution(fake_site, monkeypatch):
    fake_site.add("broken-dist", "raise ImportError('missing dependency')")
    fake_site.add("good-dist", GOOD_PLUGIN)
    monkeypatch.setenv(registry.STRICT_ENV, "1")
    with pytest.raises(PluginError, match="'broken-dist'.*missing dependency") as caught:
        embedplug.get_loss("GoodLoss")
    assert caught.value.distribution == "broken-dist"
    assert not registry.get_registry().is_loaded  # no half-loaded state survives

    monkeypatch.delenv(registry.STRICT_ENV)
    with pytest.warns(PluginWarning):
        assert embedplug.get_loss("GoodLoss").__name__ == "GoodLoss"


def test_strict_mode_covers_malformed_registrations_and_conflicts(fake_site, monkeypatch):
    fake_site.add("aaa-first", loss_plugin("register(ALoss, name='SharedLoss')"))
    fake_site.add("zzz-second", loss_plugin("register(BLoss, name='SharedLoss')"))
    monkeypatch.setenv(registry.STRICT_ENV, "true")
    with pytest.raises(PluginError, match="'SharedLoss' is already registered by distribution 'aaa-first'"):
        registry.list_plugins()


def test_strict_add_plugin_leaves_nothing_behind(monkeypatch):
    class Loss(torch.nn.Module):
        pass

    def register_losses(register):
        register(Loss)
        register("not a class")

    plugin = types.SimpleNamespace(embedplug_register_losses=embedplug.hookimpl(register_losses))
    monkeypatch.setenv(registry.STRICT_ENV, "1")
    with pytest.raises(PluginError, match="in-process plugin 'strict-test'.*expected a class"):
        registry.add_plugin(plugin, name="strict-test")
    assert "strict-test" not in [record["name"] for record in registry.list_plugins()]
    with pytest.raises(UnknownNameError):
        embedplug.get_loss("Loss")


# ----- documentation (as datasette does: an undocumented hook fails the build)


def hookspec_functions():
    return [
        function
        for _, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, f"{hookspecs.PROJECT_NAME}_spec")
    ]


def test_registry_knows_every_hookspec():
    assert sorted(function.__name__ for function in hookspec_functions()) == sorted(registry._known_hooks())


@pytest.mark.parametrize("hook", hookspec_functions(), ids=lambda function: function.__name__)
def test_hookspec_has_a_docstring_with_parameters_and_returns(hook):
    docstring = inspect.getdoc(hook) or ""
    assert "Parameters:" in docstring and "Returns:" in docstring
    for parameter in inspect.signature(hook).parameters:
        assert f"{parameter}:" in docstring, f"{hook.__name__} does not document {parameter!r}"


@pytest.mark.parametrize("hook", hookspec_functions(), ids=lambda function: function.__name__)
def test_hookspec_is_documented(hook):
    # One source: the plugin guide. The README only links to it.
    text = PLUGIN_DOC.read_text()
    signature = f"{hook.__name__}({', '.join(inspect.signature(hook).parameters)})"
    assert re.search(rf"^#+ {re.escape(signature)}$", text, re.MULTILINE), f"{PLUGIN_DOC} has no heading {signature}"


def test_the_documented_plugin_works(fake_site):
    """The copy-pasteable plugin in docs/writing-a-plugin.md loads cleanly and behaves."""
    text = PLUGIN_DOC.read_text()
    package = f"documented_plugin_{next(_module_counter)}"  # not embedplug_example: it may be installed
    files = dict(re.findall(r"^`src/embedplug_example/(\w+)\.py`:\n\n```python\n(.*?)```", text, re.S | re.M))
    assert sorted(files) == ["loss", "plugin", "sampler"]
    (fake_site.modules_dir / package).mkdir()
    for module, source in files.items():
        (fake_site.modules_dir / package / f"{module}.py").write_text(source.replace("embedplug_example", package))
    fake_site.module_names += [package, *(f"{package}.{module}" for module in files)]
    pyproject = tomllib.loads(re.search(r"`pyproject.toml`:\n\n```toml\n(.*?)```", text, re.S).group(1))
    [(entry_point_name, value)] = pyproject["project"]["entry-points"]["embedplug"].items()
    entry_points = {entry_point_name: value.replace("embedplug_example", package)}
    fake_site.add_metadata(pyproject["project"]["name"], "0.1.0", entry_points)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert record_for("embedplug-example")["errors"] == []
    loss_class = embedplug.get_loss("example_supcon")
    embeddings = torch.randn(6, 4, requires_grad=True)
    model = lambda features: {"sentence_embedding": features["x"]}  # noqa: E731 (stands in for a model)
    loss = loss_class(model)([{"x": embeddings}], torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert torch.isfinite(loss) and embeddings.grad.abs().sum() > 0
    sampler = embedplug.get_sampler("seeded_shuffle")(range(10), batch_size=4, drop_last=False, seed=3)
    assert sorted(index for batch in sampler for index in batch) == list(range(10))
    assert len(sampler) == 3


def test_records_are_json_serializable(throwaway_plugin):
    assert json.loads(json.dumps(registry.list_plugins())) == registry.list_plugins()
