"""Finding, reading and grouping per-sample labels (shared by the label-aware samplers).

The label column is found the way sentence-transformers finds it: the first name in ``valid_label_columns``
that is a column of the dataset (its data collator uses the same rule to pick the ``label`` it hands the loss,
so the sampler and the loss agree on what a class is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Number
from typing import Any

import numpy as np
import torch


def find_label_column(dataset: Any, valid_label_columns: Sequence[str] | None) -> str:
    """Return the first of ``valid_label_columns`` that ``dataset`` has as a column.

    Raises:
        ValueError: ``valid_label_columns`` is empty, the dataset has no named columns, or none of the names is
            one of its columns. The message names the candidates and the columns that exist.
    """
    column_names = getattr(dataset, "column_names", None)
    if not valid_label_columns:
        raise ValueError(
            "No label column: valid_label_columns is empty, so the sampler cannot tell which column holds the "
            "labels. Pass valid_label_columns=['label'] (the trainer passes its data collator's list), or give "
            "the labels directly with labels=... / from_labels(...)."
        )
    if column_names is None:
        raise ValueError(
            f"No label column: the dataset ({type(dataset).__name__}) has no column_names to search for "
            f"{list(valid_label_columns)}. Give the labels directly with labels=... or from_labels(...)."
        )
    for column_name in valid_label_columns:
        if column_name in column_names:
            return column_name
    raise ValueError(
        f"No label column: none of valid_label_columns {list(valid_label_columns)} is a column of the dataset, "
        f"which has the columns {list(column_names)}."
    )


def read_label_column(dataset: Any, column: str) -> Any:
    """Read one column of labels, as a numpy array where possible.

    A ``datasets.Dataset`` is read through its Arrow table (honouring ``select``/``shuffle`` index mappings),
    which is ~100× faster than iterating ``dataset[column]`` for a million rows.
    """
    with_format = getattr(dataset, "with_format", None)
    if with_format is not None:
        try:
            arrow_column = with_format("arrow")[column]
            return arrow_column.to_numpy(zero_copy_only=False)
        except Exception:  # noqa: BLE001 - any odd dataset type falls back to plain column access below
            pass
    return dataset[column]


@dataclass(frozen=True)
class LabelGroups:
    """Samples grouped by class, computed once with vectorised numpy.

    Classes are numbered ``0..C-1`` in order of first appearance, so the numbering only depends on the labels.

    Attributes:
        codes: ``(N,)`` int64, the class number of each sample.
        classes: ``C`` label values; ``classes[c]`` is the label of class ``c``.
        sizes: ``(C,)`` int64, samples per class.
        offsets: ``(C + 1,)`` int64; class ``c``'s samples are ``members[offsets[c]:offsets[c + 1]]``.
        members: ``(N,)`` int64 sample indices grouped by class, ascending within a class.
    """

    codes: np.ndarray
    classes: Sequence[Any]
    sizes: np.ndarray
    offsets: np.ndarray
    members: np.ndarray

    @property
    def num_samples(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.sizes.shape[0])

    def indices_of(self, class_id: int) -> np.ndarray:
        """``(sizes[class_id],)`` sample indices of one class, ascending."""
        return self.members[self.offsets[class_id] : self.offsets[class_id + 1]]


def group_labels(labels: Any) -> LabelGroups:
    """Factorise per-sample labels into classes and group the sample indices by class.

    Args:
        labels: one hashable label per sample: a 1-D numpy array or tensor, or any sequence (ints, strings,
            tuples, ...). Numbers take a vectorised path; other values are hashed in one pass.

    Raises:
        TypeError: a label is not hashable (e.g. a list), or the labels are a matrix rather than one per sample.
        ValueError: a numeric label is NaN/missing.
    """
    codes, classes = _factorize(labels)
    num_classes = len(classes)
    sizes = np.bincount(codes, minlength=num_classes).astype(np.int64, copy=False)
    offsets = np.zeros(num_classes + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    # Stable, so indices stay ascending inside each class: the grouping is a pure function of the labels.
    members = np.argsort(codes, kind="stable").astype(np.int64, copy=False)
    return LabelGroups(codes=codes, classes=classes, sizes=sizes, offsets=offsets, members=members)


def _factorize(labels: Any) -> tuple[np.ndarray, Sequence[Any]]:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1:
            raise TypeError(
                f"labels must hold one hashable label per sample, got an array of shape {labels.shape} "
                "(a multi-label or vector label per sample is not hashable)."
            )
        if labels.dtype.kind in "biufUSMm":
            return _factorize_array(labels)
        return _factorize_hashable(labels)
    if not isinstance(labels, Sequence) and not hasattr(labels, "__len__"):
        labels = list(labels)
    if len(labels) and isinstance(labels[0], Number) and not isinstance(labels[0], complex):
        try:
            array = np.asarray(labels)
        except (ValueError, TypeError):  # ragged or mixed: the per-item path reports the culprit
            array = None
        if array is not None and array.ndim == 1 and array.dtype.kind in "biuf":
            return _factorize_array(array)
    return _factorize_hashable(labels)


def _factorize_array(array: np.ndarray) -> tuple[np.ndarray, Sequence[Any]]:
    if array.dtype.kind == "f":
        missing = np.flatnonzero(np.isnan(array))
        if missing.size:
            raise ValueError(
                f"labels must not be missing: the label of sample {int(missing[0])} is NaN "
                f"({missing.size} sample(s) in all)."
            )
    if array.size == 0:
        return np.zeros(0, dtype=np.int64), []
    uniques, first_index, inverse = np.unique(array, return_index=True, return_inverse=True)
    # np.unique numbers classes in sorted order; renumber them by first appearance, like the hashing path.
    by_first_appearance = np.argsort(first_index, kind="stable")
    renumber = np.empty_like(by_first_appearance)
    renumber[by_first_appearance] = np.arange(by_first_appearance.size)
    codes = renumber[inverse.reshape(-1)].astype(np.int64, copy=False)
    return codes, uniques[by_first_appearance].tolist()


def _factorize_hashable(labels: Sequence[Any]) -> tuple[np.ndarray, Sequence[Any]]:
    class_of: dict[Any, int] = {}
    try:
        # setdefault evaluates len() before inserting, so a new label gets the next number.
        codes = [class_of.setdefault(label, len(class_of)) for label in labels]
    except TypeError:
        for index, label in enumerate(labels):
            try:
                hash(label)
            except TypeError:
                raise TypeError(
                    f"labels must be hashable: the label of sample {index} is a {type(label).__name__} "
                    f"({_short_repr(label)}). Use one hashable value (int, str, tuple) per sample."
                ) from None
        raise
    for label in class_of:
        if isinstance(label, float) and math.isnan(label):
            index = next(i for i, value in enumerate(labels) if isinstance(value, float) and math.isnan(value))
            raise ValueError(f"labels must not be missing: the label of sample {index} is NaN.")
    return np.asarray(codes, dtype=np.int64).reshape(-1), list(class_of)


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
