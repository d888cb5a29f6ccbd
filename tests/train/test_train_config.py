"""Config parsing: TOML and YAML, line numbers in errors, --set overrides, type checks."""

from __future__ import annotations

import textwrap

import pytest

from embedplug.train.config import ConfigError, apply_overrides, load_config, parse_override, toml_key_lines

TOML = textwrap.dedent(
    """\
    # a comment
    output_dir = "runs/x"
    seed = 3

    [model]
    max_seq_length = 32

    [data]
    task = "supersense"

    [loss]
    name = "BatchHardTripletLoss"
    options = { margin = 0.3, distance_metric = "cosine_distance" }

    [sampler]
    name = "PKBatchSampler"
    [sampler.options]
    k = 4

    [training]
    max_steps = 10
    learning_rate = 1e-5
    """
)


def write(tmp_path, text, name="config.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_is_parsed_into_sections(tmp_path):
    config = load_config(write(tmp_path, TOML))
    assert config.output_dir == "runs/x" and config.seed == 3
    assert config.model.max_seq_length == 32
    assert config.loss.options == {"margin": 0.3, "distance_metric": "cosine_distance"}
    assert config.sampler.options == {"k": 4}
    assert config.training == {"max_steps": 10, "learning_rate": 1e-5}


def test_unknown_key_names_key_file_and_line(tmp_path):
    path = write(tmp_path, TOML.replace("max_seq_length = 32", "max_seq_lenght = 32"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:6: unknown config key 'model.max_seq_lenght'")
    assert "Did you mean 'model.max_seq_length'" in message


def test_unknown_training_argument_names_its_line(tmp_path):
    path = write(tmp_path, TOML.replace("learning_rate = 1e-5", "learnig_rate = 1e-5"))
    with pytest.raises(ConfigError, match=r"config.toml:22: unknown config key 'training.learnig_rate'.*learning_rate"):
        load_config(path)


def test_unknown_section_and_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r":1: unknown config key 'optimiser'"):
        load_config(write(tmp_path, '[optimiser]\nlr = 1\n[data]\ntask = "supersense"\n'))
    with pytest.raises(ConfigError, match=r":2: unknown config key 'seeds'.*Did you mean 'seed'"):
        load_config(write(tmp_path, 'output_dir = "x"\nseeds = 1\n[data]\ntask = "supersense"\n'))


def test_yaml_errors_carry_line_numbers_too(tmp_path):
    text = "output_dir: runs/y\ndata:\n  task: supersense\nloss:\n  name: BatchHardTripletLoss\n  margn: 0.2\n"
    with pytest.raises(ConfigError, match=r"config.yaml:6: unknown config key 'loss.margn'"):
        load_config(write(tmp_path, text, "config.yaml"))
    good = load_config(write(tmp_path, text.replace("margn: 0.2", "options: {margin: 0.2}"), "config.yaml"))
    assert good.loss.options == {"margin": 0.2}


def test_wrong_types_are_reported(tmp_path):
    with pytest.raises(ConfigError, match=r":6: model.max_seq_length must be int, got bool"):
        load_config(write(tmp_path, TOML.replace("max_seq_length = 32", "max_seq_length = true")))
    with pytest.raises(ConfigError, match=r"loss.options must be a table"):
        text = TOML.replace('options = { margin = 0.3, distance_metric = "cosine_distance" }', "options = 3")
        load_config(write(tmp_path, text))


def test_moved_training_keys_say_where_they_belong(tmp_path):
    with pytest.raises(ConfigError, match="training.output_dir is not set here; use the top-level output_dir"):
        load_config(write(tmp_path, TOML + 'output_dir = "elsewhere"\n'))


def test_exactly_one_of_task_and_path(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of data.task"):
        load_config(write(tmp_path, TOML.replace('task = "supersense"', 'task = "supersense"\npath = "x.csv"')))
    with pytest.raises(ConfigError, match="exactly one of data.task"):
        load_config(None)


def test_overrides_parse_toml_values_and_bare_words():
    assert parse_override("training.learning_rate=2e-5") == ("training.learning_rate", 2e-5)
    assert parse_override("training.bf16=true") == ("training.bf16", True)
    assert parse_override("loss.name=GISTEmbedLoss") == ("loss.name", "GISTEmbedLoss")
    assert parse_override("evaluation.tasks=['supersense']") == ("evaluation.tasks", ["supersense"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("training.max_steps")


def test_overrides_win_and_are_named_in_errors(tmp_path):
    path = write(tmp_path, TOML)
    config = load_config(path, ["training.max_steps=99", "loss.options.margin=0.5", "sampler.options.k=8"])
    assert config.training["max_steps"] == 99
    assert config.loss.options["margin"] == 0.5 and config.sampler.options == {"k": 8}
    with pytest.raises(ConfigError, match=r"^--set training.max_stepz=5: unknown config key"):
        load_config(path, ["training.max_stepz=5"])


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="seed is a value, not a table"):
        apply_overrides({"seed": 1}, {}, ["seed.x=2"])


def test_key_lines_handle_tables_dotted_keys_and_multiline_values():
    text = 'a = 1\n[t]\nb.c = 2\nlist = [\n  1,\n  2,\n]\nd = """\nx = 1\n"""\ne = 5\n[[u]]\nf = 1\n'
    lines = toml_key_lines(text)
    assert lines["a"] == 1 and lines["t"] == 2 and lines["t.b.c"] == 3
    assert lines["t.list"] == 4 and lines["t.d"] == 8 and lines["t.e"] == 11
    assert "t.x" not in lines  # inside a multi-line string


def test_config_round_trips_to_plain_data(tmp_path):
    config = load_config(write(tmp_path, TOML))
    data = config.to_dict()
    assert data["loss"]["name"] == "BatchHardTripletLoss" and "sources" not in data
    assert config.where("loss.options.margin").endswith("config.toml:13")


def test_invalid_toml_and_unsupported_suffix(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[data\n"))
    with pytest.raises(ConfigError, match="unsupported config format"):
        load_config(write(tmp_path, "{}", "config.json"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_self_guide_means_no_guide_model(tmp_path):
    from embedplug.train.assemble import load_guide

    path = tmp_path / "config.toml"
    path.write_text('[data]\ntask = "reverse-dictionary"\n[guide]\npath = "self"\n')
    # No second model and no second forward pass: the GIST losses filter with the model's own embeddings.
    assert load_guide(load_config(path), model=object()) is None
