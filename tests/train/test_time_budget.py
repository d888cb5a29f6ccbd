"""``training.max_minutes``: steps fixed from the measured step time, with a schedule that completes."""

from __future__ import annotations

import itertools
import json
import types

import pytest
from train.wordnet_run_helpers import small_wordnet, supersense_config

from embedplug.cli import main
from embedplug.train import time_budget
from embedplug.train.resume import METRICS_FILE, RUN_FILE
from embedplug.train.time_budget import SAFETY_MARGIN, apply_time_budget, choose_steps


def test_choose_steps_fits_the_budget_and_keeps_the_configured_cap():
    steps, reason = choose_steps(budget_seconds=360, spent_seconds=20, seconds_per_step=5.0, cap=230)
    assert steps == int(340 * (1 - SAFETY_MARGIN) // 5.0) == 64
    assert "64 steps fit, of the 230 configured" in reason and "max_steps = 64" in reason
    steps, reason = choose_steps(budget_seconds=360, spent_seconds=20, seconds_per_step=0.5, cap=230)
    assert steps == 230 and "all 230 configured steps fit" in reason
    steps, reason = choose_steps(budget_seconds=10, spent_seconds=12, seconds_per_step=5.0, cap=230)
    assert steps == 1 and "not even one step fits" in reason


def test_a_resumed_run_reuses_the_steps_chosen_at_its_start():
    trainer = types.SimpleNamespace(args=types.SimpleNamespace(max_steps=230))
    chosen = dict(max_minutes=6.0, seconds_per_step=5.0, measuring_seconds=20.0, cap=230, steps=64, reason="r")
    budget = apply_time_budget(trainer, model=None, max_minutes=6.0, seed=1, previous=chosen)
    assert trainer.args.max_steps == 64 and budget.steps == 64 and "resuming" in budget.reason


@pytest.fixture
def tiny_model(tmp_path):
    """A one-layer, 16-wide BERT with the bundled model's tokenizer: seconds to train, untrained."""
    from _support import bundled_model_path
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )
    raw = tmp_path / "tiny-bert"
    BertModel(config).save_pretrained(str(raw))
    tokenizer.save_pretrained(str(raw))
    transformer = models.Transformer(str(raw), max_seq_length=16)
    folder = tmp_path / "tiny-model"
    SentenceTransformer(modules=[transformer, models.Pooling(16)], device="cpu").save(str(folder))
    return folder


def test_budget_fixes_max_steps_from_the_timed_steps_and_the_schedule_completes(
    tmp_path, monkeypatch, capsys, tiny_model
):
    # A clock that advances 0.5 s per reading: the warm-up step "takes" 0.5 s and already uses more than a
    # tenth of the 6 s budget, so it is the measurement (the slow-machine path).
    ticks = itertools.count(1)
    monkeypatch.setattr(time_budget, "_clock", lambda: next(ticks) * 0.5)
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    overrides = [f"model.path='{tiny_model}'", "training.max_steps=10", "training.max_minutes=0.1"]
    overrides += ["training.lr_scheduler_type='linear'", "training.save_steps=100", "training.learning_rate=1e-3"]
    assert main(["train", str(config), "--no-progress", *[f"--set={item}" for item in overrides]]) == 0
    out = capsys.readouterr().out
    # 6 s budget - 2 s of timing = 4 s, less the margin: 7 steps of 0.5 s.
    assert "time budget: training.max_minutes = 0.1 (6 s); 1 timed step took 0.50 s each" in out
    assert "7 steps fit, of the 10 configured -> max_steps = 7" in out
    run = tmp_path / "run"
    metrics = json.loads((run / METRICS_FILE).read_text())
    assert metrics["global_step"] == 7 and metrics["time_budget"]["steps"] == 7
    assert json.loads((run / RUN_FILE).read_text())["time_budget"]["steps"] == 7
    state = json.loads((run / "checkpoint-7" / "trainer_state.json").read_text())
    assert state["max_steps"] == 7
    rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    # The linear decay spans the 7 chosen steps (over the configured 10 it would end at 4e-4, not 1.4e-4).
    assert rates == pytest.approx([1e-3 * (7 - step) / 7 for step in range(7)])


def test_timing_runs_a_warm_up_step_then_times_the_others(monkeypatch):
    import torch

    ticks = itertools.count(1)
    monkeypatch.setattr(time_budget, "_clock", lambda: float(next(ticks)))
    weight = torch.nn.Parameter(torch.ones(2))
    batches = [{"x": torch.tensor([float(i), 1.0])} for i in range(2)]
    trainer = types.SimpleNamespace(
        args=types.SimpleNamespace(gradient_accumulation_steps=2),
        get_train_dataloader=lambda: batches,  # fewer batches than steps: the epoch is reused
        _prepare_inputs=lambda batch: batch,
        compute_loss=lambda model, inputs: (weight * inputs["x"]).sum(),
    )
    model = torch.nn.Linear(1, 1)
    seconds, timed = time_budget.measure_seconds_per_step(trainer, model)
    # Each step reads the clock twice (1 s apart); x2 for the accumulated micro-batches.
    assert (seconds, timed) == (2.0, time_budget.TIMED_STEPS)
    seconds, timed = time_budget.measure_seconds_per_step(trainer, model, time_limit=2.5)
    assert timed == 1  # stopped after the warm-up step and one timed step


def test_max_minutes_must_be_positive(tmp_path, monkeypatch, capsys):
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    assert main(["train", str(config), "--set", "training.max_minutes=0"]) == 2
    assert "training.max_minutes must be a positive number of minutes, got 0" in capsys.readouterr().err
