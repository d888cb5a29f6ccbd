"""Short real runs of ``embedplug train`` with the bundled model on a made-up WordNet."""

from __future__ import annotations

import json
import math
import re

import pytest
from train.test_train_errors import label_aware_plugin  # noqa: F401  (a fixture)
from train.wordnet_run_helpers import small_wordnet, supersense_config

from embedplug.cli import main
from embedplug.train.resume import METRICS_FILE, MODEL_DIR

pytestmark = pytest.mark.slow


def test_supersense_run_writes_model_metrics_and_reports_the_backend(tmp_path, monkeypatch, capsys):
    config = supersense_config(
        tmp_path, small_wordnet(tmp_path, monkeypatch), '\ntasks = ["supersense", "reverse-dictionary"]\n'
    )
    assert main(["train", str(config), "--no-progress"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    # No progress bar but sentence-transformers' own transient model-card one (it has no switch).
    bars = [part for part in re.split(r"[\r\n]", captured.err) if re.search(r"\d+/\d+ \[", part)]
    assert all("Computing widget examples" in bar for bar in bars), bars
    assert "BEFORE" in out and "AFTER" in out and "CHANGE" in out
    assert "loss backend: embedplug.losses.batch_hard_triplet.BatchHardTripletLoss on embedplug's" in out
    output_dir = tmp_path / "run"
    metrics = json.loads((output_dir / METRICS_FILE).read_text())
    assert metrics["global_step"] == 2 and metrics["resumed_from"] is None
    for phase in ("before", "after"):
        assert set(metrics[phase]) == {"supersense", "reverse-dictionary"}
        assert 0.0 <= metrics[phase]["supersense"]["knn@1"] <= 1.0
        assert set(metrics[phase]["reverse-dictionary"]) >= {"recall@1", "recall@10", "mrr@10"}
        assert all(math.isfinite(v) for m in metrics[phase].values() for v in m.values())
    assert metrics["sampler"] == "PKBatchSampler"
    assert any((output_dir / MODEL_DIR).rglob("*.safetensors"))


@pytest.mark.parametrize(
    "guide_path, loss_options",
    [("", "{mini_batch_size=4}"), ("self", "{mini_batch_size=4, margin=-0.1, sort_mini_batches_by_length=true}")],
    ids=["frozen_guide", "self_guided_sorted"],
)
def test_gist_run_with_a_guide(tmp_path, monkeypatch, capsys, guide_path, loss_options):
    import embedplug
    from embedplug.registry import UnknownNameError

    try:
        embedplug.get_loss("CachedGISTEmbedLoss")
    except UnknownNameError:
        pytest.skip("CachedGISTEmbedLoss is not registered yet")
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    overrides = [
        "data.task=reverse-dictionary",
        "loss.name=CachedGISTEmbedLoss",
        f"loss.options={loss_options}",
        f"guide.path='{guide_path}'",
        "sampler.name=''",
        "sampler.options={}",
    ]
    arguments = ["train", str(config), "--no-progress"]
    for override in overrides:
        arguments += ["--set", override]
    assert main(arguments) == 0
    metrics = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    assert metrics["loss"] == "CachedGISTEmbedLoss" and metrics["global_step"] == 2
    assert "recall@1" in metrics["after"]["reverse-dictionary"]


def test_evaluation_during_training_drives_early_stopping(tmp_path, monkeypatch):
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    # No improvement can reach a threshold of 2.0, so patience 1 stops the run at the second evaluation.
    overrides = [
        "training.max_steps=4",
        "training.eval_steps=1",
        "training.early_stopping_patience=1",
        "training.early_stopping_threshold=2.0",
    ]
    arguments = ["train", str(config), "--no-progress"]
    for override in overrides:
        arguments += ["--set", override]
    assert main(arguments) == 0
    output_dir = tmp_path / "run"
    state = json.loads(next(output_dir.glob("checkpoint-*/trainer_state.json")).read_text())
    evaluated = [entry for entry in state["log_history"] if "eval_supersense_knn@1" in entry]
    assert evaluated, "the held-out evaluator ran during training"
    assert json.loads((output_dir / METRICS_FILE).read_text())["global_step"] == 2


def test_a_plugins_label_aware_loss_trains(tmp_path, monkeypatch, label_aware_plugin):  # noqa: F811
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    assert main(["train", str(config), "--no-progress", "--set", "loss.name='PluginSupConLoss'", "--set", "loss.options={}"]) == 0
    metrics = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    assert metrics["global_step"] == 2 and metrics["loss"] == "PluginSupConLoss"
