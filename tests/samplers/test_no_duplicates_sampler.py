"""NoDuplicatesBatchSampler: sentence-transformers' duplicate-free batches, deterministic per (seed, epoch)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embedplug.samplers import NoDuplicatesBatchSampler

datasets = pytest.importorskip("datasets")

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@st.composite
def pair_datasets(draw):
    """Anchor/positive pairs drawn from a small vocabulary, so duplicates across rows and columns are common."""
    rows = draw(st.integers(1, 60))
    vocabulary = draw(st.integers(2, 80))
    words = st.integers(0, vocabulary - 1).map(lambda i: f"w{i}")
    anchors = draw(st.lists(words, min_size=rows, max_size=rows))
    positives = draw(st.lists(words, min_size=rows, max_size=rows))
    labels = draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows))
    return datasets.Dataset.from_dict({"anchor": anchors, "positive": positives, "label": labels})


@PROPERTY_SETTINGS
@given(
    dataset=pair_datasets(),
    batch_size=st.integers(2, 9),
    drop_last=st.booleans(),
    seed=st.integers(0, 10_000),
    epoch=st.integers(0, 20),
)
def test_batches_match_sentence_transformers(dataset, batch_size, drop_last, seed, epoch):
    st_sampler_module = pytest.importorskip("sentence_transformers.base.sampler")
    ours = NoDuplicatesBatchSampler(dataset, batch_size, drop_last, valid_label_columns=["label"], seed=seed)
    theirs = st_sampler_module.NoDuplicatesBatchSampler(
        dataset, batch_size, drop_last, valid_label_columns=["label"], generator=torch.Generator(), seed=seed
    )
    ours.set_epoch(epoch)
    theirs.set_epoch(epoch)
    assert list(ours) == list(theirs)
    assert len(ours) == len(theirs)


@PROPERTY_SETTINGS
@given(dataset=pair_datasets(), batch_size=st.integers(2, 9), drop_last=st.booleans())
def test_no_value_twice_in_a_batch_and_labels_do_not_count(dataset, batch_size, drop_last):
    sampler = NoDuplicatesBatchSampler(dataset, batch_size, drop_last, valid_label_columns=["label"], seed=3)
    rows = dataset.to_list()
    for batch in sampler:
        assert all(0 <= i < len(rows) for i in batch)
        assert len(batch) <= batch_size and (not drop_last or len(batch) == batch_size)
        values = [value for i in batch for value in {rows[i]["anchor"], rows[i]["positive"]}]
        assert len(values) == len(set(values))


def test_label_column_is_ignored_but_other_columns_are_compared():
    dataset = datasets.Dataset.from_dict({"anchor": ["a", "b", "c", "d"], "label": [1, 1, 1, 1]})
    batches = list(NoDuplicatesBatchSampler(dataset, 4, False, valid_label_columns=["label"]))
    assert batches and sorted(batches[0]) == [0, 1, 2, 3]  # equal labels are not duplicates
    same_text = datasets.Dataset.from_dict({"anchor": ["a", "x", "y", "z"], "positive": ["p", "q", "r", "a"]})
    for batch in NoDuplicatesBatchSampler(same_text, 4, False, valid_label_columns=["label"]):
        assert not {0, 3} <= set(batch)  # row 3's positive is row 0's anchor


def test_rows_without_named_columns():
    pairs = [("a", "b"), ("b", "c"), ("d", "e"), ("f", "g"), ("a", "h"), ("i", "j")]
    sampler = NoDuplicatesBatchSampler(pairs, batch_size=3, drop_last=False, seed=2)
    batches = list(sampler)
    assert sorted(i for batch in batches for i in batch) == list(range(len(pairs)))
    for batch in batches:
        values = [value for i in batch for value in pairs[i]]
        assert len(values) == len(set(values))


def test_deterministic_without_a_generator_and_independent_of_global_rng():
    anchors = [f"q{i % 13}" for i in range(40)]
    dataset = datasets.Dataset.from_dict({"anchor": anchors, "positive": [str(i) for i in range(40)]})
    first = list(NoDuplicatesBatchSampler(dataset, 8, False, seed=6))
    torch.manual_seed(1)
    np.random.seed(1)
    assert list(NoDuplicatesBatchSampler(dataset, 8, False, seed=6)) == first
    sampler = NoDuplicatesBatchSampler(dataset, 8, False, seed=6)
    sampler.set_epoch(2)
    assert list(sampler) != first


def test_warns_when_the_data_is_too_repetitive(caplog):
    dataset = datasets.Dataset.from_dict({"anchor": ["same"] * 6})
    sampler = NoDuplicatesBatchSampler(dataset, batch_size=2, drop_last=True)
    with caplog.at_level(logging.WARNING, logger="embedplug.samplers.no_duplicates"):
        assert list(sampler) == []
    assert "too few distinct values for batch_size=2" in caplog.text


def test_errors():
    with pytest.raises(ValueError, match=r"needs an indexable dataset with a length, got NoneType"):
        NoDuplicatesBatchSampler(None, batch_size=4, drop_last=False)
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer"):
        NoDuplicatesBatchSampler([1, 2], batch_size=0, drop_last=False)


@pytest.mark.parametrize("num_proc", [None, 1, 2])
def test_precompute_hashes_options_as_in_sentence_transformers(num_proc):
    st_sampler_module = pytest.importorskip("sentence_transformers.base.sampler")
    anchors = [f"q{i % 11}" for i in range(45)]
    dataset = datasets.Dataset.from_dict(
        {"anchor": anchors, "positive": [f"p{i % 17}" for i in range(45)], "label": [i % 3 for i in range(45)]}
    )
    options = dict(precompute_hashes=True, precompute_num_proc=num_proc, precompute_batch_size=7)
    ours = NoDuplicatesBatchSampler(dataset, 6, False, valid_label_columns=["label"], seed=4, **options)
    plain = NoDuplicatesBatchSampler(dataset, 6, False, valid_label_columns=["label"], seed=4)
    theirs = st_sampler_module.NoDuplicatesBatchSampler(
        dataset, 6, False, valid_label_columns=["label"], generator=torch.Generator(), seed=4, **options
    )
    for name in ("precompute_hashes", "precompute_num_proc", "precompute_batch_size"):
        assert getattr(ours, name) == getattr(theirs, name), name
    for epoch in (0, 3):
        for sampler in (ours, plain, theirs):
            sampler.set_epoch(epoch)
        assert list(ours) == list(theirs) == list(plain)


def test_precompute_option_errors():
    dataset = datasets.Dataset.from_dict({"anchor": ["a", "b"]})
    with pytest.raises(ValueError, match="precompute_num_proc must be a positive integer"):
        NoDuplicatesBatchSampler(dataset, 2, False, precompute_hashes=True, precompute_num_proc=0)
    with pytest.raises(ValueError, match="precompute_batch_size must be a positive integer"):
        NoDuplicatesBatchSampler(dataset, 2, False, precompute_batch_size=0)
    with pytest.raises(TypeError, match="precompute_hashes must be a bool"):
        NoDuplicatesBatchSampler(dataset, 2, False, precompute_hashes="yes")


def test_precompute_options_through_for_trainer():
    from embedplug.samplers import for_trainer

    dataset = datasets.Dataset.from_dict({"anchor": ["a", "b", "a", "c"], "positive": ["x", "y", "z", "w"]})
    factory = for_trainer("NoDuplicatesBatchSampler", precompute_hashes=True, precompute_num_proc=1)
    sampler = factory(dataset, batch_size=2, drop_last=False, valid_label_columns=None, generator=None, seed=0)
    assert sampler.precompute_hashes and sampler.precompute_num_proc == 1
    assert all(len({dataset[i]["anchor"] for i in batch}) == len(batch) for batch in sampler)
