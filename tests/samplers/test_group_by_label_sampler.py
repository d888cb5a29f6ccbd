"""GroupByLabelBatchSampler: sentence-transformers' batches, deterministic per (seed, epoch)."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from embedplug.samplers import GroupByLabelBatchSampler

datasets = pytest.importorskip("datasets")

PROPERTY_SETTINGS = settings(max_examples=50, deadline=None, derandomize=True)


@st.composite
def labelled_datasets(draw):
    sizes = draw(st.lists(st.integers(1, 15), min_size=1, max_size=10))
    labels = draw(st.permutations([c for c, size in enumerate(sizes) for _ in range(size)]))
    return datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(len(labels))], "label": list(labels)})


def qualified_labels(labels):
    return {label for label, count in collections.Counter(labels).items() if count >= 2}


@PROPERTY_SETTINGS
@given(
    dataset=labelled_datasets(),
    batch_size=st.sampled_from([4, 6, 8, 12]),
    drop_last=st.booleans(),
    seed=st.integers(0, 10_000),
    epoch=st.integers(0, 50),
)
def test_batches_match_sentence_transformers(dataset, batch_size, drop_last, seed, epoch):
    st_sampler_module = pytest.importorskip("sentence_transformers.base.sampler")
    assume(len(qualified_labels(dataset["label"])) >= 2)
    ours = GroupByLabelBatchSampler(dataset, batch_size, drop_last, valid_label_columns=["label"], seed=seed)
    theirs = st_sampler_module.GroupByLabelBatchSampler(
        dataset, batch_size, drop_last, valid_label_columns=["label"], generator=torch.Generator(), seed=seed
    )
    ours.set_epoch(epoch)
    theirs.set_epoch(epoch)
    assert list(ours) == list(theirs)
    assert len(ours) == len(theirs)


@PROPERTY_SETTINGS
@given(dataset=labelled_datasets(), batch_size=st.sampled_from([4, 6, 8]), drop_last=st.booleans())
def test_every_batch_has_two_labels_with_two_samples_each(dataset, batch_size, drop_last):
    labels = dataset["label"]
    assume(len(qualified_labels(labels)) >= 2)
    sampler = GroupByLabelBatchSampler(dataset, batch_size, drop_last, valid_label_columns=["label"], seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len(set(batch)) == len(batch)
        assert len(batch) == batch_size or (not drop_last and batch is batches[-1] and len(batch) >= 4)
        counts = collections.Counter(labels[i] for i in batch)
        assert len(counts) >= 2 and min(counts.values()) >= 2
    used = [i for batch in batches for i in batch]
    assert len(used) == len(set(used))  # no sample twice in an epoch


def test_deterministic_without_a_generator_and_independent_of_global_rng():
    labels = [i % 5 for i in range(50)]
    first = list(GroupByLabelBatchSampler.from_labels(labels, batch_size=8, seed=4))
    torch.manual_seed(123)
    np.random.seed(123)
    assert list(GroupByLabelBatchSampler.from_labels(labels, batch_size=8, seed=4)) == first
    sampler = GroupByLabelBatchSampler.from_labels(labels, batch_size=8, seed=4)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_errors():
    with pytest.raises(ValueError, match=r"batch_size must be an even number >= 4, but got 5"):
        GroupByLabelBatchSampler.from_labels([0, 0, 1, 1], batch_size=5)
    with pytest.raises(ValueError, match=r"at least 2 distinct labels with >= 2 samples each.*only 1"):
        GroupByLabelBatchSampler.from_labels([0, 0, 0, 1, 2], batch_size=4)
    dataset = datasets.Dataset.from_dict({"anchor": ["a", "b"]})
    with pytest.raises(ValueError, match=r"No label column.*\['label'\].*\['anchor'\]"):
        GroupByLabelBatchSampler(dataset, 4, False, valid_label_columns=["label"])
    with pytest.raises(TypeError, match=r"labels must be hashable: the label of sample 1 is a list"):
        GroupByLabelBatchSampler.from_labels([0, [1], 0, 1], batch_size=4)
