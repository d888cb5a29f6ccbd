"""The [mining] section of ``embedplug train``: checks before the model loads, negatives mined before
training and refreshed during it, mining time reported apart."""

from __future__ import annotations

import json

import pytest
from train.wordnet_run_helpers import small_wordnet, supersense_config

from embedplug.cli import main
from embedplug.train.config import load_config
from embedplug.train.mining import NegativeRefresher, RefreshedNegativesCollator
from embedplug.train.resume import METRICS_FILE

PAIRS = ["data.task=reverse-dictionary", "loss.name=MultipleNegativesRankingLoss", "loss.options={}",
         "sampler.name=''", "sampler.options={}"]


def arguments(config, *overrides):
    result = ["train", str(config), "--no-progress"]
    for override in overrides:
        result += ["--set", override]
    return result


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["mining.num_negatives=2"], "mines negatives for (anchor, positive) pairs, but the training data has "
                                     "columns 'text', 'label' with label column 'label'"),
        ([*PAIRS, "mining.refresh_every=5"], "[mining] needs mining.num_negatives"),
        ([*PAIRS, "mining.num_negatives=0", "mining.options={relative_margin=0.1}"], "needs mining.num_negatives"),
        ([*PAIRS, "mining.num_negatives=-1"], "mining.num_negatives must be a positive integer"),
        ([*PAIRS, "mining.num_negatives=1", "mining.refresh_every=-2"], "mining.refresh_every must be >= 0"),
        ([*PAIRS, "mining.num_negatives=1", "mining.options={relative_margn=0.1}"],
         "unknown mining option 'relative_margn'. Did you mean 'relative_margin'"),
        ([*PAIRS, "mining.num_negatives=1", "mining.options={output_format='triplet'}"],
         "mining.options.output_format is not set here"),
        ([*PAIRS, "mining.num_negatives=1", "mining.refresh_every=3", "training.dataloader_num_workers=2"],
         "set training.dataloader_num_workers = 0"),
    ],
    ids=["labelled-data", "refresh-without-negatives", "options-without-negatives", "negative-count", "refresh",
         "unknown-option", "fixed-option", "workers"],
)
def test_bad_mining_config_fails_before_the_model_loads(tmp_path, monkeypatch, capsys, overrides, message):
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    assert main(arguments(config, *overrides)) == 2
    assert message in capsys.readouterr().err


def test_the_collator_swaps_in_the_current_negatives(tmp_path, monkeypatch):
    config = load_config(supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch)), [*PAIRS, "mining.num_negatives=2"])

    class Pairs:
        column_names = ["anchor", "positive"]

    refresher = NegativeRefresher(config, Pairs(), model=None)
    refresher.negatives = {("a", "p"): ["n1", "n2"]}
    seen = []
    collator = RefreshedNegativesCollator(lambda rows: seen.append(rows) or "batch", refresher)
    rows = [
        {"anchor": "a", "positive": "p", "negative_1": "old", "negative_2": "old"},
        {"anchor": "b", "positive": "q", "negative_1": "kept", "negative_2": "kept"},
    ]
    assert collator(rows) == "batch"
    assert seen[0] == [
        {"anchor": "a", "positive": "p", "negative_1": "n1", "negative_2": "n2"},
        {"anchor": "b", "positive": "q", "negative_1": "kept", "negative_2": "kept"},  # no new negatives: kept
    ]
    assert list(seen[0][0]) == ["anchor", "positive", "negative_1", "negative_2"]  # column order kept


@pytest.mark.slow
def test_mined_and_refreshed_run_reports_mining_apart(tmp_path, monkeypatch, capsys):
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    monkeypatch.setenv("EMBEDPLUG_CACHE_DIR", str(tmp_path / "cache"))
    batches = []
    original = RefreshedNegativesCollator.__call__

    def spy(self, features):
        batches.append([self.refresher.fill(row) for row in features])
        return original(self, features)

    monkeypatch.setattr(RefreshedNegativesCollator, "__call__", spy)
    overrides = [*PAIRS, "mining.num_negatives=1", "mining.refresh_every=1", "training.max_steps=3",
                 "training.per_device_train_batch_size=4", "mining.options={relative_margin=0.0}"]
    assert main(arguments(config, *overrides)) == 0
    out = capsys.readouterr().out
    assert "mining: 1 hard negatives for" in out
    assert "mining: refreshed negatives at step 1" in out and "mining: refreshed negatives at step 2" in out
    metrics = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    mining = metrics["mining"]
    assert [mining_round["step"] for mining_round in mining["rounds"]] == [0, 1, 2]  # not after the last step
    assert mining["rounds"][0]["embedded_texts"] > 0 and mining["training_rows"] > 0
    assert all(mining_round["ranks"] == 1 for mining_round in mining["rounds"])
    assert metrics["timings"]["mining_seconds"] == pytest.approx(mining["seconds"])
    assert metrics["global_step"] == 3
    assert batches and all(set(row) == {"anchor", "positive", "negative_1"} for batch in batches for row in batch)
    for batch in batches:
        for row in batch:
            assert row["negative_1"] != row["positive"]


@pytest.mark.slow
def test_torchrun_two_processes_mine_their_shares_and_train(tmp_path):
    """Two gloo ranks: mining before training and one refresh, each rank mining its share (collectives
    in step with rank 0, which evaluates first), then training on the gathered negatives."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from data.wordnet_fixture import write_wordnet_fixture

    repository = Path(__file__).resolve().parents[2]
    config = supersense_config(tmp_path, write_wordnet_fixture(tmp_path / "wordnet"))
    environment = {
        **os.environ,
        "EMBEDPLUG_BATCH_LOG": str(tmp_path / "log"),
        "EMBEDPLUG_HOLDOUT_FRACTION": "0.5",
        "EMBEDPLUG_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(repository), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        str(Path(__file__).with_name("torchrun_recorder.py")), *arguments(
            config, *PAIRS, "mining.num_negatives=1", "mining.refresh_every=1", "training.max_steps=2",
            "training.per_device_train_batch_size=2",
        ),
    ]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert result.stdout.count("mining: refreshed negatives at step 1") == 1  # printed by rank 0 only
    metrics = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    assert [mining_round["step"] for mining_round in metrics["mining"]["rounds"]] == [0, 1]
    assert all(mining_round["ranks"] == 2 for mining_round in metrics["mining"]["rounds"])
    assert metrics["global_step"] == 2
