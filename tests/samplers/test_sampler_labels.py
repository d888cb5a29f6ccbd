"""The label helpers: finding the label column, reading it, grouping samples by class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embedplug.samplers._labels import find_label_column, group_labels, read_label_column

datasets = pytest.importorskip("datasets")


def reference_groups(labels):
    """Plain-Python grouping: classes by first appearance, indices ascending."""
    groups: dict = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    return groups


label_values = st.one_of(
    st.lists(st.integers(-3, 6), max_size=40),
    st.lists(st.sampled_from(["a", "b", "c", "dd"]), max_size=40),
    st.lists(st.tuples(st.integers(0, 2), st.sampled_from("xy")), max_size=40),
    st.lists(st.one_of(st.integers(0, 3), st.text(max_size=1)), max_size=40),  # mixed: 1 and "1" differ
)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(labels=label_values, as_array=st.booleans())
def test_grouping_matches_a_plain_python_reference(labels, as_array):
    expected = reference_groups(labels)
    if as_array and labels and all(isinstance(label, int) for label in labels):
        labels = np.asarray(labels)
    groups = group_labels(labels)
    assert list(groups.classes) == list(expected)
    assert groups.num_samples == len(labels)
    for class_id, indices in enumerate(expected.values()):
        assert groups.indices_of(class_id).tolist() == indices
        assert (groups.codes[indices] == class_id).all()
    assert groups.sizes.tolist() == [len(indices) for indices in expected.values()]


def test_tensors_and_numeric_lists_take_the_vectorised_path():
    groups = group_labels(torch.tensor([5, 3, 5, 7]))
    assert list(groups.classes) == [5, 3, 7]
    assert groups.codes.tolist() == [0, 1, 0, 2]
    # Python equality: 1, 1.0 and True are one label, as in a dict.
    assert group_labels([1, 1.0, True, 2]).codes.tolist() == [0, 0, 0, 1]


def test_find_label_column_uses_the_first_valid_name_present():
    dataset = datasets.Dataset.from_dict({"text": ["a"], "score": [0.5], "label": [1]})
    assert find_label_column(dataset, ["label", "score"]) == "label"
    assert find_label_column(dataset, ["score", "label"]) == "score"


def test_read_label_column_follows_index_mappings():
    dataset = datasets.Dataset.from_dict({"label": list(range(20))}).shuffle(seed=3).select([4, 0, 9])
    assert read_label_column(dataset, "label").tolist() == list(dataset["label"])


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match=r"the label of sample 1 is a set"):
        group_labels(["a", {1}])
    with pytest.raises(TypeError, match=r"got an array of shape \(2, 2, 1\)"):
        group_labels(torch.zeros(2, 2, 1))
    with pytest.raises(ValueError, match=r"the label of sample 1 is NaN \(2 sample\(s\) in all\)"):
        group_labels(np.array([0.0, np.nan, np.nan]))
    with pytest.raises(ValueError, match=r"the label of sample 1 is NaN"):
        group_labels(["a", float("nan")])
