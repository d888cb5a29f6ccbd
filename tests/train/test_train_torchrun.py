"""``embedplug train`` under ``torchrun --nproc-per-node 2`` on CPU (gloo): a gathered batch-hard run.

The launch runs tests/train/torchrun_recorder.py, which records every rank's PK sampler epoch and
the labels of every batch the loss sees, then calls ``embedplug.cli.main``: the ranks must train on
different, complete P x K batches that together are the sampler's epoch, and a run resumed (again in
2 processes) from the first checkpoint must train on the batches the uninterrupted run trained on next.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from data.wordnet_fixture import write_wordnet_fixture
from train.wordnet_run_helpers import supersense_config

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
K = 2
BATCH_SIZE = 4  # P = 2 classes of K = 2; with small_classes="skip" the fixture's epoch is 4 batches
RECORDER = Path(__file__).with_name("torchrun_recorder.py")
REPO = Path(__file__).resolve().parents[2]


def torchrun_train(config: Path, log: Path, *arguments: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "EMBEDPLUG_BATCH_LOG": str(log),
        "EMBEDPLUG_HOLDOUT_FRACTION": "0.5",  # as small_wordnet sets it in-process
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD_SIZE}",
        str(RECORDER), "train", str(config), "--no-progress", *arguments,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def read_log(log: Path, rank: int) -> tuple[list[list[int]], list[list[int]]]:
    """(the batches the rank's sampler yielded for epoch 0, the label lists its loss saw)."""
    epoch, steps = [], []
    for line in (log.parent / f"{log.name}.rank{rank}").read_text().splitlines():
        record = json.loads(line)
        if "step" in record:
            steps.append(record["step"])
        elif record["epoch"] == 0:
            epoch.append(record["epoch_batch"])
    return epoch, steps


def assert_complete_pk(batch: list[int]) -> None:
    counts = Counter(batch)
    assert len(batch) == BATCH_SIZE and len(counts) == BATCH_SIZE // K and set(counts.values()) == {K}, batch


def test_two_process_run_splits_the_epoch_and_resumes_with_the_same_batches(tmp_path):
    wordnet = write_wordnet_fixture(tmp_path / "wordnet")
    extra_options = '{ distance_metric = "cosine_distance", margin = 0.1, gather_across_devices = true }'
    config = supersense_config(tmp_path, wordnet)
    text = config.read_text()
    text = text.replace('options = { distance_metric = "cosine_distance", margin = 0.1 }', f"options = {extra_options}")
    text = text.replace("options = { k = 2 }", 'options = { k = 2, small_classes = "skip" }')
    text = text.replace("max_steps = 2", "num_train_epochs = 1").replace("per_device_train_batch_size = 8", f"per_device_train_batch_size = {BATCH_SIZE}")
    config.write_text(text)
    output_dir = tmp_path / "run"

    torchrun_train(config, tmp_path / "full")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    epoch, _ = read_log(tmp_path / "full", 0)
    assert read_log(tmp_path / "full", 1)[0] == epoch  # every rank plans the same epoch
    assert len(epoch) == 4 and metrics["global_step"] == len(epoch) // WORLD_SIZE
    steps = [read_log(tmp_path / "full", rank)[1] for rank in range(WORLD_SIZE)]
    for rank, rank_steps in enumerate(steps):
        for batch in rank_steps:
            assert_complete_pk(batch)
        # accelerate shards whole batches: rank r trains on epoch batches r, r + W, ...
        assert rank_steps == epoch[rank::WORLD_SIZE]
    assert steps[0] != steps[1]
    assert sorted(steps[0] + steps[1]) == sorted(epoch)
    assert (output_dir / "model" / "config_sentence_transformers.json").is_file()

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(output_dir, resumed_dir)
    for path in ("metrics.json", "model", "checkpoint-2"):
        target = resumed_dir / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    torchrun_train(config, tmp_path / "resumed_log", "--set", f'output_dir="{resumed_dir}"', "--resume")
    resumed = json.loads((resumed_dir / "metrics.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-1") and resumed["global_step"] == 2
    for rank in range(WORLD_SIZE):
        _, resumed_steps = read_log(tmp_path / "resumed_log", rank)
        assert resumed_steps == steps[rank][1:], f"rank {rank}"
