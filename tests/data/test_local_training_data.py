"""Training data from local CSV, JSON Lines and datasets folders."""

from __future__ import annotations

import json

import pytest

from embedplug.data.local import LOCAL_EVALUATION, detect_format, load_local

TOPICS = ["cats", "dogs", "fish"]
ROWS = [{"question": f"what is thing {i}", "answer": f"thing {i}", "topic": TOPICS[i % 3]} for i in range(200)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_pairs_from_jsonl_are_split_and_evaluated_by_retrieval(tmp_path):
    data = load_local(str(write_jsonl(tmp_path / "pairs.jsonl", ROWS)), columns=["question", "answer"])
    assert data.train.column_names == ["question", "answer"]
    evaluation = data.evaluations[0]
    assert evaluation.name == LOCAL_EVALUATION and evaluation.primary_metric == "recall@1"
    held_out_questions = set(evaluation.queries)
    assert held_out_questions and not held_out_questions & set(data.train["question"])
    assert len(data.train) + len(evaluation.queries) == len(ROWS)


def test_string_labels_from_csv_become_integers(tmp_path):
    path = tmp_path / "labelled.csv"
    path.write_text("text,topic\n" + "".join(f"{r['question']},{r['topic']}\n" for r in ROWS))
    data = load_local(str(path), label_column="topic")
    assert data.label_column == "topic"
    assert set(data.train["topic"]) == {0, 1, 2}
    assert data.evaluations[0].primary_metric == "knn@1"


def test_datasets_folder_and_explicit_eval_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "folder"))
    eval_path = write_jsonl(tmp_path / "eval.jsonl", ROWS[:10])
    data = load_local(str(tmp_path / "folder"), eval_path=str(eval_path), columns=["question", "answer"], train_size=50)
    assert len(data.train) == 50
    assert len(data.evaluations[0].queries) == 10


def test_missing_columns_are_named(tmp_path):
    with pytest.raises(ValueError, match="'query'"):
        load_local(str(write_jsonl(tmp_path / "pairs.jsonl", ROWS)), columns=["query", "answer"])


def test_unknown_suffix_asks_for_a_format(tmp_path):
    with pytest.raises(ValueError, match="data.format"):
        detect_format(tmp_path / "rows.parquet")


@pytest.mark.parametrize("columns", [(), ("text",)])
def test_a_label_column_without_the_setting_suggests_it(tmp_path, columns):
    path = tmp_path / "labelled.csv"
    path.write_text("text,label\n" + "".join(f"{r['question']},{i % 3}\n" for i, r in enumerate(ROWS)))
    with pytest.raises(ValueError, match=r"column named 'label' but data.label_column is not set.*'text'") as raised:
        load_local(str(path), columns=columns)
    assert 'data.label_column = "label"' in str(raised.value)
    assert "needs two text columns" not in str(raised.value)
    assert load_local(str(path), label_column="label").label_column == "label"


def test_pairs_with_a_label_column_still_load_without_the_setting(tmp_path):
    # (text1, text2, label) rows, e.g. similarity scores: two text columns, nothing is missing.
    rows = [{"a": r["question"], "b": r["answer"], "label": 0.5} for r in ROWS]
    data = load_local(str(write_jsonl(tmp_path / "scored.jsonl", rows)))
    assert data.label_column is None and data.evaluations[0].primary_metric == "recall@1"
