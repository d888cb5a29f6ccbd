"""The before/after table and the atomic JSON writer."""

from __future__ import annotations

from embedplug.evaluation.report import format_comparison, read_json, write_json


def test_table_shows_before_after_and_change():
    before = {"reverse-dictionary": {"recall@1": 0.3392, "mrr@10": 0.4}}
    after = {"reverse-dictionary": {"recall@1": 0.4151}}
    lines = format_comparison(before, after).splitlines()
    assert lines[0].split() == ["EVALUATION", "METRIC", "BEFORE", "AFTER", "CHANGE"]
    assert lines[1].split() == ["reverse-dictionary", "recall@1", "0.3392", "0.4151", "+0.0759"]
    assert lines[2].split() == ["reverse-dictionary", "mrr@10", "0.4000", "-", "-"]


def test_table_without_after_has_three_columns():
    lines = format_comparison({"supersense": {"knn@1": 0.5}}).splitlines()
    assert lines[0].split() == ["EVALUATION", "METRIC", "BEFORE"]


def test_json_round_trip_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "run" / "metrics.json"
    write_json(path, {"after": {"x": {"y": 1.0}}})
    assert read_json(path) == {"after": {"x": {"y": 1.0}}}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]
    assert read_json(tmp_path / "missing.json") is None
