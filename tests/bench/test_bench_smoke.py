"""A short smoke run of `embedplug bench` (the full benchmark is `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from embedplug.bench import batch_hard_cases, labelled_contrastive_cases
from embedplug.bench.memory import peak_extra_memory_bytes


def test_bench_command_writes_table_json_and_plot(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "embedplug", "bench", "--sizes", "64", "128", "--dims", "16", "--repeats", "1",
         "--output", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )
    assert "| N | D | implementation |" in result.stdout
    payload = json.loads((tmp_path / "bench.json").read_text())
    implementations = {row["implementation"] for row in payload["results"]}
    assert "gemm floor (torch.mm)" in implementations and "sentence-transformers 6.2" in implementations
    assert all(row["seconds"] > 0 for row in payload["results"])
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_every_implementation_computes_the_same_loss_gradient():
    inputs = batch_hard_cases.make_inputs(96, 8)
    gradients = {}
    for name, fn in batch_hard_cases.available_implementations().items():
        if name.startswith("gemm") or name == "pytorch-metric-learning":  # different loss definition
            continue
        fn(inputs)
        gradients[name] = inputs.embeddings.grad.clone()
    reference = gradients.pop("sentence-transformers 6.2")
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
    assert {(p.loss, p.implementation, p.n) for p in points} >= {("BatchHardTripletLoss", "sentence-transformers 6.2", 128)}
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
        for name in ("embedplug fused", "sentence-transformers 6.2"):
            if name in implementations:
                implementations[name](inputs)
                gradients[name] = inputs.anchor.grad.clone()
        expected = gradients.pop("sentence-transformers 6.2")
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
