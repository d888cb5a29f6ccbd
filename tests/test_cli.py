"""The ``embedplug`` command line: ``plugins`` (table and JSON) and ``doctor``."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import warnings

import pytest
import torch

import embedplug
from embedplug import cli, registry


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m embedplug ARGS`` in a fresh interpreter, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "embedplug", *args], capture_output=True, text=True, timeout=120
    )


def test_plugins_prints_a_table_with_the_builtin_plugin():
    result = run_cli("plugins")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["PLUGIN", "DISTRIBUTION", "VERSION", "LOSSES", "SAMPLERS", "STATUS"]
    assert rows[0].split()[:3] == ["embedplug", "embedplug", embedplug.__version__]
    assert rows[0].split()[-1] == "ok"


def test_plugins_json_is_a_list_of_records_with_the_builtin_first():
    result = run_cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    builtin = records[0]
    assert (builtin["name"], builtin["distribution"]) == ("embedplug", "embedplug")
    assert builtin["version"] == embedplug.__version__
    assert builtin["hooks"] == ["embedplug_register_losses", "embedplug_register_samplers"]
    assert builtin["errors"] == []
    assert set(builtin) == {
        "name", "distribution", "version", "entry_point", "hooks", "losses", "samplers", "errors", "disabled",
        "implementations", "aliases",
    }


def test_doctor_json_prints_backend_torch_and_plugins():
    result = run_cli("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["embedplug"] == embedplug.__version__
    assert report["torch"] == torch.__version__ and report["torch_cuda"] == torch.version.cuda
    assert isinstance(report["backend"], dict) and report["backend"].keys() == embedplug.backend_info().keys()
    assert report["plugins"][0]["distribution"] == "embedplug"
    assert "BatchHardTripletLoss" in report["plugins"][0]["implementations"]["embedplug fused kernel"]


def test_doctor_prints_a_readable_report_with_a_verdict_per_op_and_device():
    result = run_cli("doctor")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert not text.lstrip().startswith("{") and "\\n" not in text and "\t" not in text
    assert f"embedplug {embedplug.__version__}" in text and f"torch {torch.__version__}" in text
    [row] = [line.split(None, 1) for line in text.splitlines() if line.split()[:1] == ["batch_hard_mining"]]
    cpu_and_cuda = row[1]
    if embedplug.backend_info()["extension"]["loaded"]:
        assert cpu_and_cuda.startswith("fused ")
    if torch.version.cuda is None:
        assert cpu_and_cuda.endswith("reference: CPU-only torch")
    assert "no CUDA kernel for this op" not in text
    assert any("embedplug fused kernel: " in line and "BatchAllTripletLoss" in line for line in text.splitlines())
    assert any(line.strip().startswith("embedplug torch: TripletLoss") for line in text.splitlines())


def _report(**changes):
    """A doctor report as gather() makes it, for one op, with ``changes`` applied."""
    report = {
        "embedplug": "0.1.0", "python": "3.11.0", "torch": "2.13.0", "torch_cuda": "12.8", "sentence_transformers": "6.2.0",
        "backend": {
            "extension": {"loaded": True, "reason": "loaded", "cuda_kernels": True, "openmp": True,
                          "parallel_backend": "ATen/Parallel:\n\tat::get_num_threads() : 2\n"},
            "cuda_available": True,
            "ops": {"batch_hard_mining": {
                "cpu": {"implementation": "fused", "reason": "embedplug._C kernel for CPU"},
                "cuda": {"implementation": "fused", "reason": "embedplug._C kernel for CUDA"},
            }},
        },
        "plugins": [],
    }
    for path, value in changes.items():
        *parents, key = path.split("__")
        target = report
        for parent in parents:
            target = target[parent]
        target[key] = value
    return report


@pytest.mark.parametrize(
    "changes, cuda_verdict",
    [
        ({}, "fused"),
        ({"backend__cuda_available": False}, "fused kernel built, but no CUDA device is visible"),
        (
            {"torch_cuda": None, "backend__cuda_available": False,
             "backend__ops__batch_hard_mining__cuda": {"implementation": "reference", "reason": "x"}},
            "reference: CPU-only torch",
        ),
        (
            {"backend__extension__cuda_kernels": False,
             "backend__ops__batch_hard_mining__cuda": {"implementation": "reference", "reason": "x"}},
            "reference: extension built without CUDA kernels",
        ),
        (
            {"backend__extension__loaded": False,
             "backend__ops__batch_hard_mining__cuda": {"implementation": "reference", "reason": "x"}},
            "reference: extension not loaded",
        ),
    ],
    ids=["fused", "no device", "cpu-only torch", "no cuda kernels", "not loaded"],
)
def test_doctor_names_the_cause_of_each_verdict(changes, cuda_verdict):
    from embedplug import doctor

    report = _report(**changes)
    assert doctor.op_verdict(report, report["backend"]["ops"]["batch_hard_mining"]["cuda"], "cuda") == cuda_verdict
    text = doctor.format_report(report)
    assert "batch_hard_mining" in text and cuda_verdict in text and "\t" not in text
    if report["backend"]["extension"]["loaded"]:
        assert "\n      at::get_num_threads() : 2" in text  # the settings, one per line, indented


def test_console_script_is_installed():
    assert importlib.metadata.entry_points(group="console_scripts", name="embedplug")
    [script] = importlib.metadata.entry_points(group="console_scripts", name="embedplug")
    assert script.value == "embedplug.cli:main"


def test_missing_or_unknown_command_is_a_usage_error(capsys):
    for argv in ([], ["no-such-command"]):
        with pytest.raises(SystemExit) as caught:
            cli.main(argv)
        assert caught.value.code == 2
    assert "usage: embedplug" in capsys.readouterr().err


def broken_entry_point(monkeypatch) -> None:
    """Make discovery return the built-in plugin and one entry point whose module does not exist."""
    real = list(registry._iter_entry_points())
    broken = importlib.metadata.EntryPoint(name="broken", value="embedplug_no_such_module", group="embedplug")
    monkeypatch.setattr(registry, "_iter_entry_points", lambda: [*real, broken])


def test_plugins_table_shows_each_error_once(fresh_registry, monkeypatch, capsys):
    # The table says it; a PluginWarning (with the registry's source line) would say it a second time.
    broken_entry_point(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", registry.PluginWarning)
        assert cli.main(["plugins"]) == 0
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert "1 error(s)" in output
    assert output.count("import of 'embedplug_no_such_module' failed: ModuleNotFoundError") == 1
    assert "error: import of 'embedplug_no_such_module' failed: ModuleNotFoundError" in output


def test_plugins_counts_classes_not_aliases(fresh_registry, capsys):
    class ALoss(torch.nn.Module):
        pass

    class Plugin:
        @embedplug.hookimpl
        def embedplug_register_losses(self, register):
            register(ALoss, aliases=["a-loss", "a_loss"])

    registry.add_plugin(Plugin(), name="aliased", distribution="aliased-dist", version="1.0")
    assert cli.main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("aliased "))
    assert row.split()[3] == "1"  # LOSSES: one class, under three names
    assert any(line.endswith(": ALoss (alias a-loss, a_loss)") for line in lines)


def test_plugins_in_strict_mode_reports_the_error_without_a_traceback(fresh_registry, monkeypatch, capsys):
    broken_entry_point(monkeypatch)
    monkeypatch.setenv(registry.STRICT_ENV, "1")
    assert cli.main(["plugins", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: embedplug plugin from plugin 'broken' (embedplug_no_such_module, ")


def test_doctor_survives_plugin_errors_in_strict_mode(fresh_registry, monkeypatch, capsys):
    broken_entry_point(monkeypatch)
    monkeypatch.setenv(registry.STRICT_ENV, "1")
    assert cli.main(["doctor", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plugins"].startswith("error: ")
    assert cli.main(["doctor"]) == 0
    assert "plugins: error: " in capsys.readouterr().out


def test_subcommands_are_added_from_the_registry_dict(monkeypatch, capsys):
    def add_hello_command(subparsers):
        subparsers.add_parser("hello").set_defaults(handler=lambda args: print("hi") or 7)

    monkeypatch.setitem(cli.SUBCOMMANDS, "hello", add_hello_command)
    assert cli.main(["hello"]) == 7
    assert capsys.readouterr().out == "hi\n"


@pytest.mark.parametrize(
    ("followed", "expected"),
    [
        ({"follows": "6.3", "installed": "6.3.0", "exact": True}, "; the drop-in losses follow sentence-transformers 6.3"),
        ({"follows": "6.3", "installed": "6.4.0", "exact": False},
         "; the drop-in losses follow sentence-transformers 6.3, the nearest release embedplug knows"),
    ],
)
def test_doctor_says_which_sentence_transformers_release_the_drop_ins_follow(followed, expected):
    from embedplug.doctor import format_report

    first_line = format_report(_report(backend__sentence_transformers=followed)).splitlines()[0]
    assert first_line.endswith(expected)
