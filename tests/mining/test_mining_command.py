"""``embedplug mine``: reads CSV / JSON Lines / a datasets folder, writes a datasets folder equal to
sentence-transformers' output, prints a readable summary and saves it as JSON."""

from __future__ import annotations

import json

import pytest
from _support import bundled_model_path
from wordnet_mining_data import word_to_definition_rows

from embedplug import cli

pytestmark = pytest.mark.slow
datasets = pytest.importorskip("datasets")
st_util = pytest.importorskip("sentence_transformers.util")


@pytest.fixture(scope="module")
def rows():
    return word_to_definition_rows(polysemous=10, monosemous=20)


@pytest.fixture(scope="module")
def model_path():
    return str(bundled_model_path())


@pytest.fixture(scope="module")
def st_model(model_path):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = 32
    return model


@pytest.fixture
def cache_dir(tmp_path_factory, monkeypatch):
    path = tmp_path_factory.getbasetemp() / "mine-command-cache"  # shared: the texts are embedded once
    monkeypatch.setenv("EMBEDPLUG_CACHE_DIR", str(path))
    return path


def write_jsonl(path, rows):
    with path.open("w") as file:
        for word, definition in zip(rows["word"], rows["definition"]):
            file.write(json.dumps({"id": 0, "word": word, "definition": definition}) + "\n")
    return path


def mine_cli(data, output, model_path, *options):
    return cli.main([
        "mine", str(data), "--model", model_path, "--output", str(output), "--max-seq-length", "32", "--quiet",
        *options,
    ])


def test_jsonl_in_datasets_folder_out_equals_sentence_transformers(tmp_path, rows, model_path, st_model, cache_dir, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    options = ["--anchor-column", "word", "--positive-column", "definition", "--relative-margin", "0.05",
               "--num-negatives", "4", "--output-format", "n-tuple", "--output-scores"]
    assert mine_cli(data, tmp_path / "out", model_path, *options) == 0
    printed = capsys.readouterr().out
    written = datasets.load_from_disk(str(tmp_path / "out"))
    expected = st_util.mine_hard_negatives(
        datasets.Dataset.from_json(str(data)), st_model, anchor_column_name="word", positive_column_name="definition",
        relative_margin=0.05, num_negatives=4, output_format="n-tuple", output_scores=True, verbose=False,
    )
    assert written.to_dict() == expected.to_dict()
    summary = json.loads((tmp_path / "out" / "mining_summary.json").read_text())
    assert summary["output_rows"] == written.num_rows
    assert summary["dataset_rows"] == len(rows["word"])
    assert summary["scores"]["negative"]["count"] == 4 * written.num_rows
    assert summary["removed"]["relative_margin"] > 0
    assert printed.startswith(f"Mined {written.num_rows:,} rows (n-tuple) from {len(rows['word']):,} input rows")
    assert "Negatives per query (asked for 4): " in printed
    assert "removed relative_margin (= 0.05)" in printed
    for label in ("positive", "negative", "pos - neg"):
        assert any(line.startswith(label) for line in printed.splitlines())


def test_csv_with_a_text_corpus_and_a_datasets_folder_input(tmp_path, rows, model_path, cache_dir, capsys):
    csv = tmp_path / "pairs.csv"
    datasets.Dataset.from_dict({"q": rows["word"], "p": rows["definition"]}).to_csv(str(csv), index=False)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a large cat that roars\n\nthe capital of a country\n")
    assert mine_cli(csv, tmp_path / "from-csv", model_path, "--corpus", str(corpus), "--output-format", "labeled-pair") == 0
    from_csv = datasets.load_from_disk(str(tmp_path / "from-csv"))
    assert from_csv.column_names == ["q", "p", "label"]
    folder = tmp_path / "pairs-folder"
    datasets.Dataset.from_dict({"q": rows["word"], "p": rows["definition"]}).save_to_disk(str(folder))
    assert mine_cli(folder, tmp_path / "from-folder", model_path, "--corpus", str(corpus), "--output-format", "labeled-pair") == 0
    assert datasets.load_from_disk(str(tmp_path / "from-folder")).to_dict() == from_csv.to_dict()
    first, second = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Mined")]
    assert "(embedded 0 of" not in first
    assert "(embedded 0 of" in second  # the second run read every vector back


@pytest.mark.parametrize(
    ("make", "options", "message"),
    [
        (lambda tmp: tmp / "missing.jsonl", [], "data file"),
        (lambda tmp: write_jsonl(tmp / "p.jsonl", word_to_definition_rows(2, 2)), ["--anchor-column", "nope"], "no column 'nope'"),
        (lambda tmp: write_jsonl(tmp / "p.jsonl", word_to_definition_rows(2, 2)), ["--corpus", "/nonexistent.txt"], "corpus file"),
    ],
    ids=["missing-data", "unknown-column", "missing-corpus"],
)
def test_bad_input_exits_2_with_one_line(tmp_path, model_path, make, options, message, capsys):
    assert mine_cli(make(tmp_path), tmp_path / "out", model_path, *options) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("embedplug mine: error: ") and message in error and "\n" not in error


def test_an_existing_output_is_kept_unless_overwrite(tmp_path, rows, model_path, cache_dir, capsys):
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert mine_cli(data, output, model_path, "--anchor-column", "word", "--positive-column", "definition") == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (output / "keep.txt").exists()
    assert mine_cli(data, output, model_path, "--anchor-column", "word", "--positive-column", "definition", "--overwrite") == 0
    assert not (output / "keep.txt").exists()
    assert datasets.load_from_disk(str(output)).column_names == ["word", "definition", "negative"]
