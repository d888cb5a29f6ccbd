"""Errors a user can act on, raised before any model is loaded."""

from __future__ import annotations

import pytest
from train.wordnet_run_helpers import small_wordnet, supersense_config

from embedplug.cli import main
from embedplug.data.wordnet import WORDNET_DIR_ENV
from embedplug.train.config import ConfigError, load_config
from embedplug.train.data import load_training_data
from embedplug.train.losses import check_data_fits_loss, loss_class, requires_labels


def test_unknown_loss_lists_registered_names_and_close_matches(tmp_path, monkeypatch, capsys):
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    assert main(["train", str(config), "--set", "loss.name=BatchHardTriplet"]) == 2
    err = capsys.readouterr().err
    assert "no loss named 'BatchHardTriplet'" in err
    assert "Did you mean 'BatchHardTripletLoss'" in err and "Available losses:" in err
    assert "--set loss.name=BatchHardTriplet" in err


def test_unknown_sampler_lists_registered_names(tmp_path, monkeypatch, capsys):
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    assert main(["train", str(config), "--set", "sampler.name=PKSampler"]) == 2
    err = capsys.readouterr().err
    assert "no sampler named 'PKSampler'" in err and "PKBatchSampler" in err


def test_unknown_config_key_exits_with_the_line(tmp_path, monkeypatch, capsys):
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    config.write_text(config.read_text().replace("max_steps = 2", "max_step = 2"))
    assert main(["train", str(config)]) == 2
    assert f"{config}:15: unknown config key 'training.max_step'" in capsys.readouterr().err


def test_labelled_loss_with_pair_data_says_it_needs_labels(tmp_path, monkeypatch):
    config = load_config(
        supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch)), ["data.task=reverse-dictionary"]
    )
    data = load_training_data(config)
    with pytest.raises(ConfigError, match="mines triplets from class labels.*no label column.*anchor, positive"):
        check_data_fits_loss(loss_class(config), config, data.label_column, list(data.train.column_names))


def test_pair_loss_with_labelled_data_says_it_needs_pairs(tmp_path, monkeypatch):
    class PairLoss:
        pass

    config = load_config(supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch)))
    assert not requires_labels(PairLoss)
    with pytest.raises(ConfigError, match=r"\(anchor, positive\) pairs"):
        check_data_fits_loss(PairLoss, config, "label", ["text", "label"])


def test_missing_wordnet_prints_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(WORDNET_DIR_ENV, raising=False)
    config = supersense_config(tmp_path, tmp_path / "no-wordnet-here")
    assert main(["train", str(config)]) == 2
    assert "apt-get install -y wordnet-base" in capsys.readouterr().err


def test_unknown_loss_option_lists_the_valid_ones(tmp_path, monkeypatch):
    from embedplug.train.losses import resolve_options

    config = load_config(supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch)), ["loss.options.margn=1"])
    expected = r"--set loss.options.margn=1: BatchHardTripletLoss has no option 'margn'.*margin"
    with pytest.raises(ConfigError, match=expected):
        resolve_options(loss_class(config), config, model=None, load_guide=lambda: None)


def test_unknown_distance_name(tmp_path, monkeypatch):
    from embedplug.train.losses import resolve_options

    config = load_config(
        supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch)), ["loss.options.distance_metric='manhattan'"]
    )
    with pytest.raises(ConfigError, match="unknown distance_metric 'manhattan'.*cosine_distance"):
        resolve_options(loss_class(config), config, model=None, load_guide=lambda: None)


def test_unknown_task_and_evaluation_task(tmp_path, monkeypatch):
    config_path = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    with pytest.raises(ConfigError, match="unknown task 'hypernyms'"):
        load_training_data(load_config(config_path, ["data.task=hypernyms"]))
    with pytest.raises(ConfigError, match="unknown evaluation task"):
        load_training_data(load_config(config_path, ["evaluation.tasks=['nope']"]))


def test_early_stopping_needs_evaluation_during_training(tmp_path, monkeypatch):
    from embedplug.train.assemble import training_arguments

    config = load_config(
        supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch)), ["training.early_stopping_patience=2"]
    )
    with pytest.raises(ConfigError, match="early stopping needs evaluation during training"):
        training_arguments(config, None, True, "supersense_knn@1")
