"""Shared set-up for the training tests: a made-up WordNet, a held-out half, and a tiny config."""

from __future__ import annotations

import textwrap
from pathlib import Path

from data.wordnet_fixture import write_wordnet_fixture

from embedplug.data import splits
from embedplug.data.tasks import wordnet_split


def small_wordnet(tmp_path: Path, monkeypatch) -> Path:
    """A fixture WordNet with half its synsets held out (5% of 36 synsets would be one or two)."""
    monkeypatch.setattr(splits, "HOLDOUT_FRACTION", 0.5)
    wordnet_split.cache_clear()
    return write_wordnet_fixture(tmp_path / "wordnet")


def supersense_config(tmp_path: Path, wordnet_dir: Path, extra: str = "") -> Path:
    """A two-step batch-hard run on the fixture, checkpointing every step."""
    path = tmp_path / "supersense.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            output_dir = "{tmp_path / 'run'}"
            seed = 1
            [model]
            max_seq_length = 16
            [data]
            task = "supersense"
            wordnet_dir = "{wordnet_dir}"
            [loss]
            name = "BatchHardTripletLoss"
            options = {{ distance_metric = "cosine_distance", margin = 0.1 }}
            [sampler]
            name = "PKBatchSampler"
            options = {{ k = 2 }}
            [training]
            max_steps = 2
            per_device_train_batch_size = 8
            learning_rate = 1e-5
            save_steps = 1
            logging_steps = 1
            [evaluation]
            batch_size = 16
            """
        )
        + extra
    )
    return path
