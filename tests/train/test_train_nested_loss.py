"""Wrapper losses in ``embedplug train`` configs: the [loss.inner] syntax, its errors, and a real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train.wordnet_run_helpers import small_wordnet, supersense_config

from embedplug.cli import main
from embedplug.train.config import ConfigError, load_config
from embedplug.train.losses import build_loss, describe_backend, innermost_loss, loss_chain, loss_class
from embedplug.train.resume import METRICS_FILE

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MATRYOSHKA_CONFIG = CONFIGS / "matryoshka-cached-gist.toml"


def _pair_config(tmp_path, monkeypatch, *overrides: str):
    path = supersense_config(tmp_path, small_wordnet(tmp_path, monkeypatch))
    return load_config(path, ["data.task=reverse-dictionary", "sampler.name=''", "sampler.options={}", *overrides])


def test_nested_table_is_parsed_with_lines(tmp_path):
    path = tmp_path / "nested.toml"
    path.write_text(
        'output_dir = "x"\n[data]\ntask = "reverse-dictionary"\n'
        '[loss]\nname = "AdaptiveLayerLoss"\n'
        '[loss.inner]\nname = "MatryoshkaLoss"\noptions = { matryoshka_dims = [8] }\n'
        '[loss.inner.inner]\nname = "CoSENTLoss"\nfoo = 1\n'
    )
    with pytest.raises(ConfigError, match=r"nested.toml:11: unknown config key 'loss.inner.inner.foo'"):
        load_config(path)
    path.write_text(path.read_text().replace("foo = 1\n", ""))
    config = load_config(path)
    assert (config.loss.name, config.loss.inner.name, config.loss.inner.inner.name) == (
        "AdaptiveLayerLoss", "MatryoshkaLoss", "CoSENTLoss"
    )
    assert config.loss.inner.options == {"matryoshka_dims": [8]} and config.loss.inner.inner.inner is None
    assert [key for key, _, _ in loss_chain(config)] == ["loss", "loss.inner", "loss.inner.inner"]
    assert config.to_dict()["loss"]["inner"]["inner"]["name"] == "CoSENTLoss"


def test_the_shipped_matryoshka_config_names_a_fused_cached_inner_loss():
    config = load_config(MATRYOSHKA_CONFIG)
    key, cls, _ = innermost_loss(config)
    assert loss_class(config).__name__ == "MatryoshkaLoss"
    assert (key, cls.__module__) == ("loss.inner", "embedplug.losses.cached_gist_embed")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["loss.name=MatryoshkaLoss"], r"--set loss.name=MatryoshkaLoss: loss: MatryoshkaLoss wraps another loss; "
         r"add a \[loss.inner\] table"),
        (["loss.name=MatryoshkaLoss", "loss.inner.name=CachedGistEmbedLoss"],
         r"loss.inner.name: no loss named 'CachedGistEmbedLoss'. Did you mean 'CachedGISTEmbedLoss'"),
        (["loss.name=CoSENTLoss", "loss.inner.name=CachedGISTEmbedLoss"],
         r"loss.inner: CoSENTLoss does not wrap another loss"),
        (["loss.name=MatryoshkaLoss", "loss.inner.name=MatryoshkaLoss"],
         r"loss.inner: MatryoshkaLoss wraps another loss; add a \[loss.inner.inner\] table"),
        (["loss.name=MatryoshkaLoss", "loss.inner='CoSENTLoss'"], r"loss.inner must be a table/section, got str"),
    ],
    ids=["wrapper_without_inner", "unknown_inner", "inner_for_a_non_wrapper", "inner_wrapper_without_inner",
         "inner_not_a_table"],
)
def test_wrong_nesting_is_one_line_naming_the_key(tmp_path, monkeypatch, overrides, message):
    with pytest.raises(ConfigError, match=message) as raised:
        loss_chain(_pair_config(tmp_path, monkeypatch, *overrides))
    assert "\n" not in str(raised.value)


def test_wrapped_loss_as_an_option_points_at_the_inner_table(tmp_path, monkeypatch):
    config = _pair_config(
        tmp_path, monkeypatch, "loss.name=MatryoshkaLoss", "loss.options={loss='CoSENTLoss', matryoshka_dims=[8]}",
        "loss.inner.name=CoSENTLoss",
    )
    with pytest.raises(ConfigError, match=r"MatryoshkaLoss has no option 'loss' \(name the wrapped loss in a "
                       r"\[loss.inner\] table\)"):
        build_loss(loss_class(config), config, None, lambda: None)


def test_wrapper_gets_its_inner_loss_built_with_its_own_options(tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    config = _pair_config(
        tmp_path, monkeypatch, "loss.name=MatryoshkaLoss", "loss.options={matryoshka_dims=[4, 8], n_dims_per_step=1}",
        "loss.inner.name=CoSENTLoss", "loss.inner.options={scale=7.0}",
    )
    model = SentenceTransformer(modules=[Dense(8, 8)])  # only the constructors run
    loss = build_loss(loss_class(config), config, model, lambda: None)
    assert type(loss).__name__ == "MatryoshkaLoss" and loss.matryoshka_dims == (8, 4) and loss.n_dims_per_step == 1
    assert type(loss.loss).__name__ == "CoSENTLoss" and loss.loss.scale == 7.0
    assert describe_backend(loss).startswith(
        "sentence_transformers.sentence_transformer.losses.matryoshka.MatryoshkaLoss (sentence-transformers' own "
        "implementation) around sentence_transformers.sentence_transformer.losses.cosent.CoSENTLoss"
    )


@pytest.mark.slow
def test_matryoshka_around_fused_cached_gist_trains(tmp_path, monkeypatch, capsys):
    """The shipped config, shrunk to two steps of 8 pairs on the fixture WordNet."""
    wordnet_dir = small_wordnet(tmp_path, monkeypatch)
    overrides = {
        "output_dir": f"'{tmp_path / 'run'}'",
        "data.wordnet_dir": f"'{wordnet_dir}'",
        "model.max_seq_length": "16",
        "loss.inner.options": "{mini_batch_size=4, margin=-0.1}",
        "training.max_steps": "2",
        "training.per_device_train_batch_size": "8",
        "training.save_steps": "2",
        "training.logging_steps": "1",
        "training.warmup_steps": "0",
        "evaluation.queries": "0",
        "evaluation.batch_size": "16",
    }
    arguments = ["train", str(MATRYOSHKA_CONFIG), "--no-progress"]
    for key, value in overrides.items():
        arguments += ["--set", f"{key}={value}"]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "MatryoshkaLoss (sentence-transformers' own implementation) around " in out
    assert "embedplug.losses.cached_gist_embed.CachedGISTEmbedLoss on embedplug's" in out
    metrics = json.loads((tmp_path / "run" / METRICS_FILE).read_text())
    assert metrics["loss"] == "MatryoshkaLoss" and metrics["global_step"] == 2
    assert metrics["config"]["loss"]["inner"]["name"] == "CachedGISTEmbedLoss"
    state = json.loads(next((tmp_path / "run").glob("checkpoint-*/trainer_state.json")).read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
