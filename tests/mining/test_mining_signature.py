"""The drop-in takes sentence-transformers' arguments, in its order, with its defaults."""

from __future__ import annotations

import inspect

import pytest

st_util = pytest.importorskip("sentence_transformers.util")


def test_mine_hard_negatives_has_sentence_transformers_signature():
    from embedplug.mining import mine_hard_negatives

    theirs = inspect.signature(st_util.mine_hard_negatives).parameters
    ours = inspect.signature(mine_hard_negatives).parameters
    positional = [p for p in ours.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert [p.name for p in positional] == list(theirs)
    for parameter in positional:
        assert parameter.default == theirs[parameter.name].default, parameter.name
    extras = [p.name for p in ours.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert extras == ["embedding_cache", "st_version"]


def test_mine_takes_the_same_arguments_plus_progress_and_shards():
    from embedplug.mining import mine, mine_hard_negatives

    drop_in = inspect.signature(mine_hard_negatives).parameters
    full = inspect.signature(mine).parameters
    assert list(full)[: len(drop_in)] == list(drop_in)
    assert list(full)[len(drop_in) :] == ["progress", "shards"]
