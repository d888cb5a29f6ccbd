"""Training data from local files: CSV, JSON Lines / JSON, or a folder written by ``datasets``' ``save_to_disk``.

Rows are text columns (one for labelled data, two or more for pairs/triplets) and optionally a label
column. Without ``eval_path``, rows are split by a stable hash of their first text column, so the
held-out rows never change between runs or machines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from embedplug.data import splits
from embedplug.data.tasks import TrainingData
from embedplug.evaluation.suites import Evaluation, KNNEvaluation, RetrievalEvaluation

LOCAL_EVALUATION = "held-out"
FORMATS = ("csv", "json", "disk")


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "disk"
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv"}:
        return "csv"
    if suffix in {".json", ".jsonl", ".ndjson"}:
        return "json"
    raise ValueError(f"cannot tell the format of {path} from its name; set data.format to one of {', '.join(FORMATS)}")


def read_dataset(path: str | Path, data_format: str = ""):
    """A :class:`datasets.Dataset` from ``path`` (a DatasetDict folder gives its ``train`` split)."""
    import datasets

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} not found")
    data_format = data_format or detect_format(path)
    try:
        if data_format == "csv":
            return datasets.Dataset.from_csv(str(path), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if data_format == "json":
            return datasets.Dataset.from_json(str(path))
    except ValueError as exc:
        # datasets' own words for a file with a header (or nothing) and no rows.
        if "corresponds to no data" in str(exc):
            raise ValueError(f"data file {path} has no rows (a header at most)") from None
        raise
    if data_format == "disk":
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise ValueError(f"{path} holds splits {sorted(loaded)}; expected a 'train' split")
            return loaded["train"]
        return loaded
    raise ValueError(f"unknown data.format {data_format!r}; expected one of {', '.join(FORMATS)}")


def select_columns(dataset, columns: Sequence[str], label_column: str):
    """Keep ``columns`` (default: every column but the label) then the label, in that order."""
    names = list(dataset.column_names)
    columns = list(columns) or [name for name in names if name != label_column]
    missing = [name for name in [*columns, *([label_column] if label_column else [])] if name not in names]
    if missing:
        raise ValueError(f"data has no column(s) {', '.join(map(repr, missing))}; it has {', '.join(map(repr, names))}")
    if not columns:
        raise ValueError("data needs at least one text column")
    return dataset.select_columns([*columns, *([label_column] if label_column else [])])


# The column name sentence-transformers' data collator always reads as the label, never as text.
CONVENTIONAL_LABEL_COLUMN = "label"


def _check_unset_label_column(names: Sequence[str], columns: Sequence[str], label_column: str) -> None:
    """A column literally named ``label`` with ``data.label_column`` unset: class labels the config forgot.

    Without the setting that column would be read as a second text column (or dropped), and the data
    would have one real text column, which neither a pair loss nor a retrieval evaluation can use.
    """
    if label_column or CONVENTIONAL_LABEL_COLUMN not in names:
        return
    texts = [name for name in (columns or names) if name != CONVENTIONAL_LABEL_COLUMN]
    if len(texts) < 2:
        raise ValueError(
            f"the data has a column named {CONVENTIONAL_LABEL_COLUMN!r} but data.label_column is not set, so it "
            f"would be read as text beside the one text column {', '.join(map(repr, texts)) or '(none)'}: set "
            f'data.label_column = "{CONVENTIONAL_LABEL_COLUMN}" to train on its class labels'
        )


def _integer_labels(train, held_out, label_column: str):
    # Losses and kNN need integer classes; string labels are numbered in sorted order.
    values = sorted(set(train[label_column]) | set(held_out[label_column]), key=str)
    if all(isinstance(value, int) and not isinstance(value, bool) for value in values):
        return train, held_out
    number = {value: index for index, value in enumerate(values)}

    def relabel(dataset):
        # Replace the column rather than map() it: map keeps the old string feature type.
        numbered = [number[value] for value in dataset[label_column]]
        return dataset.remove_columns(label_column).add_column(label_column, numbered)

    return relabel(train), relabel(held_out)


def _check_labelled_held_out(labels: Sequence) -> None:
    """The held-out evaluation (kNN and the within/across-class spread) needs two classes and a pair."""
    counts = Counter(labels)
    if len(counts) < 2 or max(counts.values()) < 2:
        raise ValueError(
            f"the held-out split has {len(labels)} rows in {len(counts)} classes; its evaluation needs at least "
            "two classes and one class with two or more rows: give data.eval_path or more rows"
        )


def load_local(
    path: str,
    eval_path: str = "",
    data_format: str = "",
    columns: Sequence[str] = (),
    label_column: str = "",
    train_size: int = 0,
    queries: int = 0,
    references: int = 0,
) -> TrainingData:
    """Training rows and a held-out evaluation from local files."""
    dataset = read_dataset(path, data_format)
    _check_unset_label_column(dataset.column_names, columns, label_column)
    rows = select_columns(dataset, columns, label_column)
    text_columns = [name for name in rows.column_names if name != label_column]
    if eval_path:
        train = rows
        held_out = select_columns(read_dataset(eval_path, data_format), text_columns, label_column)
    else:
        hashes = [splits.stable_unit_hash(str(text)) for text in rows[text_columns[0]]]
        train = rows.select([i for i, value in enumerate(hashes) if value >= splits.HOLDOUT_FRACTION])
        held_out = rows.select([i for i, value in enumerate(hashes) if value < splits.HOLDOUT_FRACTION])
    if len(rows) == 0:
        raise ValueError(f"data file {path} has no rows")
    if len(held_out) == 0:
        raise ValueError(f"no held-out rows in {eval_path or path}; give data.eval_path or more rows")
    if len(train) == 0:
        raise ValueError(f"no training rows left in {path} after holding out {len(held_out)}; give more rows")
    if label_column:
        train, held_out = _integer_labels(train, held_out, label_column)
    if train_size:
        train = train.select(range(min(train_size, len(train))))
    return TrainingData(
        description=f"{path}: {len(train)} training rows, {len(held_out)} held out",
        train=train,
        label_column=label_column or None,
        evaluations=[_evaluation(train, held_out, text_columns, label_column, queries, references)],
    )


def _evaluation(train, held_out, text_columns, label_column, queries: int, references: int) -> Evaluation:
    held_out = held_out.select(range(min(queries or len(held_out), len(held_out))))
    if label_column:
        reference_rows = train.select(range(min(references or len(train), len(train))))
        _check_labelled_held_out(held_out[label_column])
        return KNNEvaluation(
            name=LOCAL_EVALUATION,
            queries=held_out[text_columns[0]],
            query_labels=held_out[label_column],
            references=reference_rows[text_columns[0]],
            reference_labels=reference_rows[label_column],
        )
    if len(text_columns) < 2:
        raise ValueError("unlabelled data needs two text columns (query, answer) to be evaluated")
    corpus = list(dict.fromkeys(held_out[text_columns[1]]))
    position = {text: index for index, text in enumerate(corpus)}
    return RetrievalEvaluation(
        name=LOCAL_EVALUATION,
        queries=held_out[text_columns[0]],
        corpus=corpus,
        relevant_index=[position[text] for text in held_out[text_columns[1]]],
    )
