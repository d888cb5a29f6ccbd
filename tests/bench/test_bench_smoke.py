"""A short smoke run of `embedplug bench` (the full benchmark is `make bench`)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from embedplug.bench import batch_hard_cases, labelled_contrastive_cases
from embedplug.bench.memory import peak_extra_memory_bytes
from embedplug.bench.peers import SENTENCE_TRANSFORMERS


def run_bench(tmp_path, *extra: str, preamble: str = "") -> subprocess.CompletedProcess:
    """``embedplug bench`` on two tiny sizes in a fresh interpreter (``preamble`` runs first)."""
    arguments = ["bench", "--sizes", "64", "128", "--dims", "16", "--min-time", "0.01", "--output", str(tmp_path), *extra]
    script = f"{preamble}\nfrom embedplug.cli import main\nraise SystemExit(main({arguments!r}))"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)


def test_bench_command_writes_table_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    result = run_bench(tmp_path)
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    assert header.startswith("embedplug bench: torch ") and "{" not in header and SENTENCE_TRANSFORMERS in header
    assert "| N | D | implementation | median ms (fwd+bwd) | spread (IQR) | time / GEMM floor | time / embedplug fused |" in (
        result.stdout
    )
    assert "speed-up" not in result.stdout
    payload = json.loads((tmp_path / "bench.json").read_text())
    implementations = {row["implementation"] for row in payload["results"]}
    assert "gemm floor (torch.mm)" in implementations and SENTENCE_TRANSFORMERS in implementations
    assert SENTENCE_TRANSFORMERS == f"sentence-transformers {importlib.metadata.version('sentence-transformers')}"
    for row in payload["results"]:
        assert row["seconds"] > 0 and row["q1_seconds"] <= row["seconds"] <= row["q3_seconds"]
        assert row["samples"] >= 3 and row["calls_per_sample"] >= 1
    # --min-time 0.01 is far below what a stable figure needs: the cases measured for less than the
    # stable minimum are marked, and the note says so (how many depends on the machine's load).
    if any(not row["stable"] for row in payload["results"]):
        assert "not stable enough to compare; raise --min-time" in result.stdout
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_bench_without_matplotlib_says_how_to_get_the_plot(tmp_path):
    result = run_bench(tmp_path, preamble="import sys; sys.modules['matplotlib'] = None  # not installed")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.rstrip().splitlines()[-1] == (
        "no plot bench.png: matplotlib is not installed (pip install 'embedplug[plot]' adds it)"
    )
    assert (tmp_path / "bench.json").exists() and not (tmp_path / "bench.png").exists()


def test_plot_extra_is_declared():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["plot"] == ["matplotlib"]


class FakeClock:
    """``time.perf_counter`` that advances only when the timed call runs: each call costs ``cost`` seconds."""

    def __init__(self, cost: float) -> None:
        self.now, self.cost, self.calls = 0.0, cost, 0

    def perf_counter(self) -> float:
        return self.now

    def call(self) -> None:
        self.calls += 1
        self.now += self.cost


@pytest.mark.parametrize("cost", [1e-5, 2e-3, 0.3])
def test_a_case_is_repeated_until_it_has_been_measured_for_the_minimum_time(monkeypatch, cost):
    from embedplug.bench import timing

    clock = FakeClock(cost)
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    result = timing.time_call(clock.call, repeats=3, min_seconds=1.0)
    assert result.measured_seconds >= 1.0 and result.samples >= 3 and result.stable
    assert result.median == pytest.approx(cost) and result.spread == pytest.approx(0, abs=1e-9)
    # Fast calls are batched so that one sample is long enough to time: never one 10-microsecond call alone.
    assert result.loops * cost >= timing.SAMPLE_SECONDS or result.loops == 1 and cost >= timing.SAMPLE_SECONDS
    short = timing.time_call(clock.call, repeats=3, min_seconds=0.0)
    assert short.samples == 3 and (short.stable is (short.measured_seconds >= timing.STABLE_SECONDS))


def test_every_implementation_computes_the_same_loss_gradient():
    inputs = batch_hard_cases.make_inputs(96, 8)
    gradients = {}
    for name, fn in batch_hard_cases.available_implementations().items():
        if name.startswith("gemm") or name == "pytorch-metric-learning":  # different loss definition
            continue
        fn(inputs)
        gradients[name] = inputs.embeddings.grad.clone()
    reference = gradients.pop(SENTENCE_TRANSFORMERS)
    for grad in gradients.values():
        assert grad.shape == reference.shape
        assert (grad - reference).abs().max() < 1e-5


def test_peak_memory_sees_a_large_allocation():
    import torch

    peak = peak_extra_memory_bytes(lambda: torch.ones(64 * 2**20 // 4).sum())
    assert peak is None or peak >= 32 * 2**20


def test_scaling_study_compares_like_with_like_and_writes_table_json_and_plot(tmp_path):
    import torch

    from embedplug.bench import scaling

    for loss in scaling.LOSS_NAMES:
        gradients = []
        for step in (scaling.embedplug_step(loss, gather=False), scaling.peer_step(loss)):
            columns, guide, _ = scaling._columns(loss, 64, 8, torch.Generator().manual_seed(3))
            step(columns, guide, scaling._labels(64, slice(0, 64)))
            gradients.append([column.grad for column in columns])
        for ours, theirs in zip(*gradients):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6, msg=loss)
    points = scaling.one_process(["MultipleNegativesRankingLoss", "BatchHardTripletLoss"], [64, 128], 8, repeats=1, log=lambda _: None)
    assert {(p.loss, p.implementation, p.n) for p in points} >= {("BatchHardTripletLoss", SENTENCE_TRANSFORMERS, 128)}
    assert "| BatchHardTripletLoss | 128 |" in scaling.markdown_table(points)
    scaling.write_json(points, tmp_path / "scaling.json")
    scaling.write_plot(points, tmp_path / "scaling.png")
    assert len(json.loads((tmp_path / "scaling.json").read_text())) == len(points)
    assert (tmp_path / "scaling.png").stat().st_size > 0


def test_every_mnrl_option_set_computes_the_same_gradient_as_sentence_transformers():
    import pytest

    from embedplug.bench import in_batch_negatives_cases

    pytest.importorskip("sentence_transformers")
    for option_set in in_batch_negatives_cases.MNRL_OPTION_SETS:
        implementations = in_batch_negatives_cases.available(in_batch_negatives_cases.mnrl_implementations(option_set))
        inputs = in_batch_negatives_cases.make_inputs(64, 8)
        gradients = {}
        for name in ("embedplug fused", SENTENCE_TRANSFORMERS):
            if name in implementations:
                implementations[name](inputs)
                gradients[name] = inputs.anchor.grad.clone()
        expected = gradients.pop(SENTENCE_TRANSFORMERS)
        for grad in gradients.values():
            assert (grad - expected).abs().max() < 1e-5, option_set


@pytest.mark.parametrize("loss", list(labelled_contrastive_cases.LOSSES))
def test_labelled_contrastive_cases_compute_pytorch_metric_learnings_gradient(loss):
    implementations = labelled_contrastive_cases.available_implementations(loss)
    if "embedplug fused" not in implementations or labelled_contrastive_cases.PML not in implementations:
        pytest.skip("needs embedplug._C and pytorch-metric-learning")
    inputs = labelled_contrastive_cases.make_inputs(96, 8)
    gradients = []
    for name in ("embedplug fused", labelled_contrastive_cases.PML):
        implementations[name](inputs)
        gradients.append(inputs.embeddings.grad.clone())
    assert gradients[0].abs().max() > 0
    assert (gradients[0] - gradients[1]).abs().max() < 1e-5 * gradients[1].abs().max().clamp_min(1)
