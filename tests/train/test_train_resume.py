"""Where a run starts: resume from the newest or a given checkpoint, refuse or overwrite an old run."""

from __future__ import annotations

import json

import pytest
from train.wordnet_run_helpers import small_wordnet, supersense_config

from embedplug.cli import main
from embedplug.train.config import ConfigError
from embedplug.train.resume import METRICS_FILE, MODEL_DIR, RUN_FILE, resolve_start


def checkpoint(output_dir, step):
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    return folder


def test_fresh_run_in_a_new_or_unrelated_folder(tmp_path):
    assert resolve_start(tmp_path / "new", None, False) is None
    (tmp_path / "notes.txt").write_text("mine")
    assert resolve_start(tmp_path, None, False) is None
    assert (tmp_path / "notes.txt").exists()


def test_resume_picks_the_newest_checkpoint_numerically(tmp_path):
    for step in (5, 40, 100):
        checkpoint(tmp_path, step)
    assert resolve_start(tmp_path, True, False) == tmp_path / "checkpoint-100"


def test_resume_from_a_given_checkpoint(tmp_path):
    chosen = checkpoint(tmp_path, 5)
    checkpoint(tmp_path, 10)
    assert resolve_start(tmp_path, str(chosen), False) == chosen


def test_resume_without_checkpoints_or_from_a_non_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint-N folder"):
        resolve_start(tmp_path, True, False)
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        resolve_start(tmp_path, str(tmp_path), False)


def test_an_existing_run_is_not_overwritten_without_overwrite(tmp_path):
    checkpoint(tmp_path, 5)
    (tmp_path / RUN_FILE).write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite"):
        resolve_start(tmp_path, None, False)
    assert (tmp_path / "checkpoint-5").exists()


def test_overwrite_removes_only_the_runs_own_files(tmp_path):
    checkpoint(tmp_path, 5)
    (tmp_path / MODEL_DIR).mkdir()
    (tmp_path / METRICS_FILE).write_text("{}")
    (tmp_path / "notes.txt").write_text("mine")
    assert resolve_start(tmp_path, None, True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="contradict"):
        resolve_start(tmp_path, True, True)


class _Interrupt:
    """A trainer callback that stops the run like Ctrl-C right after the first checkpoint is saved."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, monkeypatch, capsys):
    from embedplug.train import assemble

    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    output_dir = tmp_path / "run"
    real_callbacks = assemble.callbacks
    monkeypatch.setattr(assemble, "callbacks", lambda cfg: [*real_callbacks(cfg), _Interrupt()])
    assert main(["train", str(config), "--no-progress"]) == 130
    assert "continue with --resume" in capsys.readouterr().err
    assert (output_dir / "checkpoint-1").is_dir() and not (output_dir / METRICS_FILE).exists()

    monkeypatch.setattr(assemble, "callbacks", real_callbacks)
    assert main(["train", str(config), "--no-progress"]) == 2  # refuses to overwrite the interrupted run
    assert "already holds a run" in capsys.readouterr().err

    assert main(["train", str(config), "--no-progress", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "read from" in out  # the untouched model's metrics are reused
    metrics = json.loads((output_dir / METRICS_FILE).read_text())
    assert metrics["global_step"] == 2
    assert metrics["resumed_from"].endswith("checkpoint-1")
    assert metrics["before"] == json.loads((output_dir / RUN_FILE).read_text())["before"]
    assert (output_dir / MODEL_DIR / "config_sentence_transformers.json").is_file()
