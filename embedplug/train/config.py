"""The ``embedplug train`` config: schema, TOML/YAML parsing with line numbers, and ``--set`` overrides.

A config is a file with these sections (every key optional; see docs/training.md for the reference)::

    output_dir = "runs/demo"      # top level: where checkpoints, the model and metrics go
    seed = 42
    [model]       path (a local model folder; empty: the bundled all-MiniLM-L6-v2), max_seq_length
    [guide]       path  (the guide model of GIST losses; "self" guides with the model being trained)
    [data]        task ("supersense": texts with class labels, "reverse-dictionary": pairs) | path (CSV,
                  JSON Lines or a datasets folder), eval_path, format, columns, label_column, train_size,
                  wordnet_dir
    [loss]        name, options (a table of constructor arguments), inner (a wrapper's inner loss:
                  [loss.inner] with its own name, options and inner)
    [sampler]     name, options (e.g. name = "PKBatchSampler", options = { k = 4 } for labelled losses)
    [training]    any SentenceTransformerTrainingArguments field, plus max_minutes (a time budget),
                  early_stopping_patience and early_stopping_threshold
    [evaluation]  tasks, queries, references, batch_size
    [mining]      num_negatives, refresh_every, options (more mine_hard_negatives arguments)

Unknown keys are errors that name the key, the file and line, and close matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# Keys of [training] that belong elsewhere, with where they go.
_MOVED_TRAINING_KEYS = {
    "output_dir": "the top-level output_dir",
    "seed": "the top-level seed",
    "batch_sampler": "the [sampler] section",
    "resume_from_checkpoint": "the --resume option",
    "overwrite_output_dir": "the --overwrite option",
}
# Keys of [training] that embedplug reads itself (max_minutes: see embedplug/train/time_budget.py).
EXTRA_TRAINING_KEYS = {"early_stopping_patience": int, "early_stopping_threshold": float, "max_minutes": float}


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the file and line (or the ``--set`` option)."""


@dataclasses.dataclass
class ModelSection:
    path: str = ""  # empty: the bundled all-MiniLM-L6-v2
    max_seq_length: int = 0  # 0: the model's own


@dataclasses.dataclass
class GuideSection:
    path: str = ""  # empty: a frozen copy of the bundled all-MiniLM-L6-v2; "self": the model's own embeddings


@dataclasses.dataclass
class DataSection:
    task: str = ""  # "supersense" or "reverse-dictionary"; or give path
    path: str = ""  # CSV, JSONL/JSON, or a folder written by datasets' save_to_disk
    eval_path: str = ""  # held-out rows; empty: a stable hash split of path's rows
    format: str = ""  # csv, json, disk; empty: from the path
    columns: list = dataclasses.field(default_factory=list)  # the text columns to train on, in order
    label_column: str = ""
    train_size: int = 0  # 0: every training row
    wordnet_dir: str = ""


@dataclasses.dataclass
class LossSection:
    name: str = "MultipleNegativesRankingLoss"
    options: dict = dataclasses.field(default_factory=dict)
    # The loss a wrapper loss (MatryoshkaLoss, AdaptiveLayerLoss, ...) wraps: a [loss.inner] table with
    # its own name, options and (for a wrapper in a wrapper) inner; None for an ordinary loss.
    inner: LossSection | None = None


@dataclasses.dataclass
class SamplerSection:
    name: str = ""  # empty: sentence-transformers' default batch sampler
    options: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EvaluationSection:
    tasks: list = dataclasses.field(default_factory=list)  # built-in tasks to evaluate; empty: the data's own
    queries: int = 0  # 0: the task's default (the measurement size)
    references: int = 0
    batch_size: int = 128


@dataclasses.dataclass
class MiningSection:
    num_negatives: int = 0  # hard negatives mined per (anchor, positive) pair; 0: no mining
    refresh_every: int = 0  # re-embed and re-mine every N optimizer steps; 0: mine once before training
    options: dict = dataclasses.field(default_factory=dict)  # embedplug.mining.mine_hard_negatives arguments


@dataclasses.dataclass
class TrainConfig:
    """A parsed, validated config. ``sources`` maps dotted keys to where they were set, for messages."""

    output_dir: str = "runs/embedplug-train"
    seed: int = 42
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    guide: GuideSection = dataclasses.field(default_factory=GuideSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    loss: LossSection = dataclasses.field(default_factory=LossSection)
    sampler: SamplerSection = dataclasses.field(default_factory=SamplerSection)
    training: dict = dataclasses.field(default_factory=dict)
    evaluation: EvaluationSection = dataclasses.field(default_factory=EvaluationSection)
    mining: MiningSection = dataclasses.field(default_factory=MiningSection)
    sources: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def where(self, dotted_key: str) -> str:
        """Where ``dotted_key`` (or its nearest enclosing key) was set: ``"file:line"`` or ``"--set"``."""
        parts = dotted_key.split(".")
        for end in range(len(parts), 0, -1):
            source = self.sources.get(".".join(parts[:end]))
            if source:
                return source
        return "the defaults"

    def to_dict(self) -> dict[str, Any]:
        """The config as plain data (what is written beside the run)."""
        data = dataclasses.asdict(self)
        data.pop("sources")
        return data


_SECTIONS = {
    "model": ModelSection,
    "guide": GuideSection,
    "data": DataSection,
    "loss": LossSection,
    "sampler": SamplerSection,
    "evaluation": EvaluationSection,
    "mining": MiningSection,
}
_TOP_LEVEL = {"output_dir": str, "seed": int}
_FREE_FORM = {("loss", "options"), ("sampler", "options"), ("mining", "options")}


# --------------------------------------------------------------------------------------------------
# Reading files, with a line number for every key


def read_config_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, int]]:
    """The raw mapping in a TOML or YAML file and ``{dotted key: line}`` for every key in it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        return data, toml_key_lines(text)
    if path.suffix.lower() in {".yaml", ".yml"}:
        return _read_yaml(path, text)
    raise ConfigError(f"{path}: unsupported config format {path.suffix!r} (use .toml, .yaml or .yml)")


def toml_key_lines(text: str) -> dict[str, int]:
    """``{dotted key: 1-based line}`` for table headers and ``key = value`` lines of a TOML document.

    tomllib keeps no positions, so this scans lines: enough for configs (tables, dotted keys, inline
    tables, whose inner keys resolve to the line of the table). Multi-line strings and arrays are
    skipped over by tracking open brackets and triple quotes.
    """
    lines: dict[str, int] = {}
    table: list[str] = []
    depth = 0  # open [ or { of a multi-line value
    in_multiline_string = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_multiline_string:
            in_multiline_string = line.count('"""') % 2 == 0 and line.count("'''") % 2 == 0
            continue
        if depth > 0:
            depth += _bracket_balance(line)
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            header = line.strip("[]").split("#")[0].strip().strip("[]").strip()
            table = _split_dotted(header)
            lines.setdefault(".".join(table), number)
            continue
        key, separator, value = line.partition("=")
        if not separator:
            continue
        dotted = ".".join([*table, *_split_dotted(key.strip())])
        lines.setdefault(dotted, number)
        value = value.strip()
        if value.startswith('"""') or value.startswith("'''"):
            in_multiline_string = value.count(value[:3]) == 1
        else:
            depth = max(_bracket_balance(value), 0)
    return lines


def _split_dotted(key: str) -> list[str]:
    return [part.strip().strip('"').strip("'") for part in key.split(".") if part.strip()]


def _bracket_balance(text: str) -> int:
    # Strings are stripped first so a "[" inside a quoted value does not count.
    unquoted = re.sub(r'"(?:\\.|[^"\\])*"|\'[^\']*\'', "", text.split("#")[0])
    return unquoted.count("[") + unquoted.count("{") - unquoted.count("]") - unquoted.count("}")


def _read_yaml(path: Path, text: str) -> tuple[dict[str, Any], dict[str, int]]:
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    lines: dict[str, int] = {}

    def walk(mapping, prefix: tuple[str, ...]) -> None:
        for key_node, value_node in mapping.value:
            dotted = (*prefix, str(key_node.value))
            lines.setdefault(".".join(dotted), key_node.start_mark.line + 1)
            if isinstance(value_node, yaml.MappingNode):
                walk(value_node, dotted)

    if isinstance(node, yaml.MappingNode):
        walk(node, ())
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of sections, got {type(data).__name__}")
    return data, lines


# --------------------------------------------------------------------------------------------------
# --set overrides


def parse_override(assignment: str) -> tuple[str, Any]:
    """``"training.learning_rate=2e-5"`` -> ``("training.learning_rate", 2e-05)``.

    The value is read as a TOML value (numbers, booleans, quoted strings, arrays, inline tables); a
    bare word that is not valid TOML is taken as a string, so ``--set loss.name=GISTEmbedLoss`` works.
    """
    key, separator, value = assignment.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set training.max_steps=100")
    try:
        parsed = tomllib.loads(f"value = {value.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key, parsed


def apply_overrides(data: dict[str, Any], sources: dict[str, str], assignments: Iterable[str]) -> None:
    """Set each ``KEY=VALUE`` in ``data`` (creating tables as needed) and record ``--set`` as its source."""
    for assignment in assignments:
        key, value = parse_override(assignment)
        parts = key.split(".")
        table = data
        for depth, part in enumerate(parts[:-1]):
            child = table.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: depth + 1])} is a value, not a table")
            table = child
        table[parts[-1]] = value
        sources[key] = f"--set {assignment}"


# --------------------------------------------------------------------------------------------------
# Validation


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read ``path`` (TOML or YAML; ``None`` for defaults only), apply ``--set`` overrides, validate."""
    if path is None:
        data, sources = {}, {}
    else:
        data, lines = read_config_file(path)
        sources = {key: f"{path}:{line}" for key, line in lines.items()}
    apply_overrides(data, sources, overrides)
    return build_config(data, sources)


def build_config(data: Mapping[str, Any], sources: dict[str, str] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a raw mapping; :class:`ConfigError` for unknown keys or wrong types."""
    sources = dict(sources or {})
    config = TrainConfig(sources=sources)
    for key, value in data.items():
        if key in _TOP_LEVEL:
            setattr(config, key, _checked(value, _TOP_LEVEL[key], key, config))
        elif key == "training":
            config.training = _training_section(_table(value, key, config), config)
        elif key == "loss":
            config.loss = _loss_section(_table(value, key, config), key, config)
        elif key in _SECTIONS:
            setattr(config, key, _section(_SECTIONS[key], _table(value, key, config), key, config))
        else:
            _unknown(key, [*_TOP_LEVEL, *_SECTIONS, "training"], "the top level", config)
    if bool(config.data.task) == bool(config.data.path):
        raise ConfigError(
            f"{config.where('data')}: set exactly one of data.task (a built-in task) and data.path (your data)"
        )
    return config


def _table(value: Any, key: str, config: TrainConfig) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{config.where(key)}: {key} must be a table/section, got {type(value).__name__}")
    return value


def _section(cls: type, values: dict[str, Any], name: str, config: TrainConfig):
    fields = {field.name: field for field in dataclasses.fields(cls)}
    section = cls()
    for key, value in values.items():
        dotted = f"{name}.{key}"
        if key not in fields:
            _unknown(dotted, [f"{name}.{known}" for known in fields], f"[{name}]", config)
        expected = type(getattr(section, key))
        if (name.split(".")[0], key) in _FREE_FORM:  # loss.inner.options is free-form like loss.options
            value = _table(value, dotted, config)
        setattr(section, key, _checked(value, expected, dotted, config))
    return section


def _loss_section(values: dict[str, Any], name: str, config: TrainConfig) -> LossSection:
    """[loss] or a nested [loss.inner] (``name`` is its dotted key): the inner table parsed recursively."""
    values = dict(values)
    inner = values.pop("inner", None)
    section = _section(LossSection, values, name, config)
    if inner is not None:
        section.inner = _loss_section(_table(inner, f"{name}.inner", config), f"{name}.inner", config)
    return section


def _training_section(values: dict[str, Any], config: TrainConfig) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformerTrainingArguments

    known = {field.name: field for field in dataclasses.fields(SentenceTransformerTrainingArguments) if field.init}
    for key, value in values.items():
        dotted = f"training.{key}"
        if key in _MOVED_TRAINING_KEYS:
            raise ConfigError(f"{config.where(dotted)}: {dotted} is not set here; use {_MOVED_TRAINING_KEYS[key]}")
        if key in EXTRA_TRAINING_KEYS:
            _checked(value, EXTRA_TRAINING_KEYS[key], dotted, config)
        elif key not in known:
            _unknown(dotted, [f"training.{name}" for name in [*known, *EXTRA_TRAINING_KEYS]], "[training]", config)
    return dict(values)


def _checked(value: Any, expected: type, key: str, config: TrainConfig) -> Any:
    # bool is an int subclass: "max_seq_length = true" must not pass as 1.
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise ConfigError(
        f"{config.where(key)}: {key} must be {expected.__name__}, got {type(value).__name__} {value!r}"
    )


def _unknown(key: str, known: Sequence[str], where: str, config: TrainConfig) -> None:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    short = sorted({name.rsplit(".", 1)[-1] for name in known})
    listing = f" Keys in {where}: {', '.join(short)}." if len(short) <= 20 else ""
    raise ConfigError(f"{config.where(key)}: unknown config key {key!r}.{hint}{listing}")
