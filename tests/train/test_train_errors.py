"""Errors a user can act on, raised before any model is loaded."""

from __future__ import annotations

import pytest
import torch
from train.wordnet_run_helpers import small_wordnet, supersense_config

import embedplug
from embedplug import registry
from embedplug.cli import main
from embedplug.functional import supervised_contrastive_loss
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


def test_pair_loss_with_labelled_data_says_it_needs_pairs_and_names_the_declaration(tmp_path, monkeypatch):
    class PairLoss:
        pass

    config = load_config(supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch)))
    assert not requires_labels(PairLoss)
    with pytest.raises(ConfigError, match=r"\(anchor, positive\) pairs.*declares embedplug_label_aware = True"):
        check_data_fits_loss(PairLoss, config, "label", ["text", "label"])


class PluginSupConLoss(torch.nn.Module):
    """A third-party label-aware loss: it declares so, as embedplug.hookspecs documents."""

    embedplug_label_aware = True

    def __init__(self, model, temperature: float = 0.1) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, sentence_features, labels):
        embeddings = self.model(sentence_features[0])["sentence_embedding"]
        return supervised_contrastive_loss(embeddings, labels, temperature=self.temperature)


@pytest.fixture
def label_aware_plugin(fresh_registry):
    class Plugin:
        @embedplug.hookimpl
        def embedplug_register_losses(self, register):
            register(PluginSupConLoss)

    registry.add_plugin(Plugin(), name="label-aware-plugin", distribution="label-aware-dist")
    yield PluginSupConLoss
    registry.remove_plugin("label-aware-plugin")


def test_a_plugins_label_aware_loss_passes_the_checks_on_labelled_data(
    tmp_path, monkeypatch, capsys, no_model_load, label_aware_plugin
):
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    with pytest.raises(AssertionError, match="the model was loaded"):  # every check before it passed
        main(["train", str(config), "--no-progress", "--set", "loss.name='PluginSupConLoss'", "--set", "loss.options={}"])
    assert "error" not in capsys.readouterr().err


def test_a_label_aware_loss_without_a_sampler_warns_that_batches_may_hold_no_positives(
    tmp_path, monkeypatch, no_model_load
):
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    overrides = ["sampler.name=''", "sampler.options={}"]
    with pytest.warns(UserWarning, match=r"BatchHardTripletLoss learns from rows that share a label.*PKBatchSampler"):
        with pytest.raises(AssertionError, match="the model was loaded"):
            main(["train", str(config), "--no-progress", *[f"--set={item}" for item in overrides]])


def test_no_progress_turns_the_trainers_bars_off(tmp_path, monkeypatch):
    from embedplug.train.assemble import training_arguments

    config = load_config(supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch)))
    assert training_arguments(config, None, True, "supersense_knn@1", show_progress_bar=False).disable_tqdm is True
    assert training_arguments(config, None, True, "supersense_knn@1").disable_tqdm is False


def test_train_help_describes_the_config_inline(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    assert "docs/" not in help_text  # a pip-installed user has no docs folder
    for section in ("[model]", "[data]", "[loss]", "[sampler]", "[training]", "[evaluation]", "output_dir"):
        assert section in help_text


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


# --------------------------------------------------------------------------------------------------
# Mistakes that used to surface only after the model had loaded and the "before" evaluation had run.


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if `embedplug train` gets as far as loading a model."""

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the config error was reported")

    monkeypatch.setattr("embedplug.train.run.load_model", load_model)


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    # (datasets' progress bars may come first, on lines of their own)
    errors = [line for line in err.splitlines() if "embedplug train: error: " in line]
    assert len(errors) == 1 and errors[0].startswith("embedplug train: error: "), err
    return errors[0]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.learning_rate=-1e-5", "training.learning_rate must be a finite number >= 0, got -1e-05"),
        ("training.per_device_train_batch_size=0", "training.per_device_train_batch_size must be a positive integer, got 0"),
        ("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps must be a positive integer"),
        ("training.max_steps=0", "training.max_steps must be a positive integer (or -1"),
        ("sampler.options={k=1}", "k (samples per class per batch) must be an integer >= 2, got 1"),
        ("training.per_device_train_batch_size=9", "batch_size=9 is not divisible by k=2"),
    ],
    ids=["negative_learning_rate", "batch_size_0", "accumulation_0", "max_steps_0", "pk_k_1", "batch_not_multiple_of_k"],
)
def test_training_and_sampler_values_fail_before_the_model_loads(
    tmp_path, monkeypatch, capsys, no_model_load, override, expected
):
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    assert main(["train", str(config), "--no-progress", "--set", override]) == 2
    err = _one_line_error(capsys)
    key = override.split("=")[0]
    assert expected in err and key in err
    if key.startswith("training."):
        assert f"--set {override}" in err  # where it was set


def test_gist_temperature_zero_fails_before_the_model_loads(tmp_path, monkeypatch, capsys, no_model_load):
    config = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    overrides = ["data.task=reverse-dictionary", "loss.name=GISTEmbedLoss", "guide.path=self", "sampler.name=''"]
    overrides += ["sampler.options={}", "loss.options={temperature=0.0}"]
    assert main(["train", str(config), "--no-progress", *[f"--set={item}" for item in overrides]]) == 2
    err = _one_line_error(capsys)
    assert "--set loss.options={temperature=0.0}: GISTEmbedLoss options:" in err


def _labelled_csv_config(tmp_path, train_rows: str, eval_rows: str | None) -> str:
    (tmp_path / "train.csv").write_text(train_rows)
    eval_line = ""
    if eval_rows is not None:
        (tmp_path / "eval.csv").write_text(eval_rows)
        eval_line = f'eval_path = "{tmp_path / "eval.csv"}"\n'
    config = tmp_path / "labelled.toml"
    config.write_text(
        f'output_dir = "{tmp_path / "run"}"\n[data]\npath = "{tmp_path / "train.csv"}"\nlabel_column = "label"\n'
        + eval_line
        + '[loss]\nname = "BatchHardTripletLoss"\n[sampler]\nname = "PKBatchSampler"\noptions = { k = 2 }\n'
        + "[training]\nmax_steps = 1\nper_device_train_batch_size = 4\n"
    )
    return str(config)


def test_held_out_split_too_small_for_its_evaluation(tmp_path, capsys, no_model_load):
    rows = "text,label\n" + "".join(f"text {i},{i % 3}\n" for i in range(12))
    config = _labelled_csv_config(tmp_path, rows, "text,label\nheld one,0\nheld two,0\n")
    assert main(["train", config, "--no-progress"]) == 2
    err = _one_line_error(capsys)
    assert "the held-out split has 2 rows in 1 classes" in err and "data.eval_path" in err


def test_header_only_csv(tmp_path, capsys, no_model_load):
    config = _labelled_csv_config(tmp_path, "text,label\n", None)
    assert main(["train", config, "--no-progress"]) == 2
    err = _one_line_error(capsys)
    assert f"data file {tmp_path / 'train.csv'} has no rows (a header at most)" in err
