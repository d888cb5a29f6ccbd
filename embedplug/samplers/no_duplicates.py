"""Batches without duplicate values, with sentence-transformers' semantics, for in-batch-negative losses."""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from embedplug.samplers._base import BatchSamplerBase

logger = logging.getLogger(__name__)

# sentence-transformers adds this column to multi-dataset batches; it is bookkeeping, not content.
_EXCLUDED_COLUMNS = frozenset({"dataset_name"})
# Extra shuffled passes that may run to reach __len__ batches (sentence-transformers' limit).
_MAX_RESAMPLE_PASSES = 2
_PLAIN_VALUE_TYPES = (str, int, float, bool, bytes, type(None), np.integer, np.floating, np.bool_)


class NoDuplicatesBatchSampler(BatchSamplerBase):
    """Batches in which no value occurs twice, across all non-label columns.

    With in-batch negatives (MultipleNegativesRankingLoss, GIST, ...), a duplicate text in a batch is a
    "negative" identical to the positive: a false negative that the loss pushes away. This sampler walks a
    shuffled order and defers any sample sharing a value (in any column, e.g. one row's positive equal to
    another row's anchor) with the batch being built to a later batch.

    The algorithm is sentence-transformers' ``NoDuplicatesBatchSampler`` (same shuffle, same linked-list pass,
    same re-shuffled extra passes, at most 2, when one pass yields fewer than ``len(self)`` batches), so with
    the same seed and epoch it yields the batches sentence-transformers yields when given a
    ``torch.Generator``. What differs: the order comes from a local generator seeded with ``seed + epoch`` even
    without a ``generator``; every row's values are reduced once, on the first iteration, to 64-bit digests
    (BLAKE2b of the value's text, the same text sentence-transformers compares), so duplicate checks never
    re-read the dataset; and a dataset without named columns works too (rows that are dicts, tuples or values).

    Values are compared as stored: strings, numbers and lists by ``str()``, other objects by a digest of
    their pickle. Columns named in ``valid_label_columns`` and ``dataset_name`` are ignored.

    ``len(sampler)``: ``len(dataset) // batch_size`` if ``drop_last``, else rounded up. Very repetitive data can
    fall short of it even after the extra passes; a warning says so.

    ``precompute_hashes``, ``precompute_num_proc`` and ``precompute_batch_size`` are sentence-transformers'
    options with its meaning: with ``precompute_hashes=True`` the digests are computed by ``datasets.map`` in
    ``precompute_num_proc`` processes (default ``min(8, cpu_count - 1)``), ``precompute_batch_size`` rows per
    call, instead of in this process; the batches are the same either way. Unlike sentence-transformers, this
    needs no ``xxhash`` (the digests are BLAKE2b), and without the option the values are still digested once,
    in this process, rather than re-read from the dataset at every duplicate check.

    Distributed: accelerate's ``BatchSamplerShard`` deals whole batches round-robin to the processes.

    Args:
        dataset: the training dataset (``datasets.Dataset`` or any sequence of rows).
        batch_size: samples per batch.
        drop_last: drop a final batch shorter than ``batch_size``.
        valid_label_columns: label columns, excluded from the duplicate check.
        generator: accepted for signature compatibility; unused.
        seed: non-negative integer seed.
        precompute_hashes: digest the values with ``datasets.map`` (in parallel) instead of in this process.
        precompute_num_proc: processes for that ``datasets.map``; None: ``min(8, cpu_count - 1)`` when
            ``precompute_hashes``.
        precompute_batch_size: rows per batch of that ``datasets.map``.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool = False,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        precompute_hashes: bool = False,
        precompute_num_proc: int | None = None,
        precompute_batch_size: int = 1000,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise ValueError(
                f"NoDuplicatesBatchSampler needs an indexable dataset with a length, got {type(dataset).__name__}."
            )
        self._ignored_columns = _EXCLUDED_COLUMNS | set(valid_label_columns or [])
        if not isinstance(precompute_hashes, (bool, np.bool_)):
            raise TypeError(f"precompute_hashes must be a bool, got {precompute_hashes!r}.")
        if precompute_num_proc is not None and not _is_positive_int(precompute_num_proc):
            raise ValueError(f"precompute_num_proc must be a positive integer or None, got {precompute_num_proc!r}.")
        if not _is_positive_int(precompute_batch_size):
            raise ValueError(f"precompute_batch_size must be a positive integer, got {precompute_batch_size!r}.")
        self.precompute_hashes = bool(precompute_hashes)
        if self.precompute_hashes and precompute_num_proc is None:
            # sentence-transformers' default: leave one core free.
            precompute_num_proc = max(1, min(8, (os.cpu_count() or 1) - 1))
        self.precompute_num_proc = None if precompute_num_proc is None else int(precompute_num_proc)
        self.precompute_batch_size = int(precompute_batch_size)
        # (rows, values per row) int64 digests, built on first use and reused: they depend on content only.
        self._row_digests: np.ndarray | None = None

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.dataset) // self.batch_size
        return (len(self.dataset) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        num_rows = len(self.dataset)
        if num_rows == 0:
            return
        if self._row_digests is None:
            self._row_digests = self._digest_rows()
        generator = self._torch_generator()

        expected_num_batches = len(self)
        num_yielded = 0
        # The first pass is never truncated: with drop_last=False it may legitimately yield more, smaller batches.
        for batch_indices in self._iter_one_pass(generator):
            yield batch_indices
            num_yielded += 1
        if num_yielded >= expected_num_batches:
            return

        if num_yielded > 0:
            shortfall = expected_num_batches - num_yielded
            logger.warning(
                "NoDuplicatesBatchSampler produced only %d of the expected %d batches in a full pass over the "
                "dataset; the remaining %d are resampled, so at most %.1f%% of this epoch's samples repeat.",
                num_yielded,
                expected_num_batches,
                shortfall,
                100.0 * shortfall / expected_num_batches,
            )
            for _ in range(_MAX_RESAMPLE_PASSES):
                for batch_indices in self._iter_one_pass(generator):
                    yield batch_indices
                    num_yielded += 1
                    if num_yielded >= expected_num_batches:
                        return
        logger.warning(
            "NoDuplicatesBatchSampler yielded only %d of the expected %d batches: the dataset has too few "
            "distinct values for batch_size=%d. Consider lowering it.",
            num_yielded,
            expected_num_batches,
            self.batch_size,
        )

    def _iter_one_pass(self, generator: torch.Generator) -> Iterator[list[int]]:
        """Yield the batches of one shuffled pass; conflicting samples wait for a later batch of the pass."""
        num_rows = len(self.dataset)
        row_digests = self._row_digests
        index_dtype = torch.int32 if num_rows <= np.iinfo(np.int32).max else torch.int64
        order = torch.randperm(num_rows, generator=generator, dtype=index_dtype).numpy()
        # A singly linked list over positions in `order` (-1 ends it): taking a sample out of the middle is O(1)
        # and deferred samples keep their relative order.
        next_position = np.arange(1, num_rows + 1, dtype=np.int64)
        next_position[-1] = -1
        head = 0
        while head != -1:
            batch_values: set[int] = set()
            batch_indices: list[int] = []
            position, previous = head, -1
            full_batch = False
            while position != -1:
                following = int(next_position[position])
                index = int(order[position])
                values = row_digests[index].tolist()
                if any(value in batch_values for value in values):
                    previous, position = position, following
                    continue
                batch_indices.append(index)
                if previous == -1:
                    head = following
                else:
                    next_position[previous] = following
                if len(batch_indices) == self.batch_size:
                    full_batch = True
                    yield batch_indices
                    break
                batch_values.update(values)
                position = following
            if not full_batch and not self.drop_last:
                yield batch_indices

    def _digest_rows(self) -> np.ndarray:
        """``(rows, values per row)`` int64 digests of every compared value; rows short of values repeat one."""
        dataset = self.dataset
        column_names = getattr(dataset, "column_names", None)
        if column_names is not None:
            columns = [name for name in column_names if name not in self._ignored_columns]
            if self.precompute_hashes and columns and hasattr(dataset, "map"):
                return self._digest_rows_with_map(columns)
            with_format = getattr(dataset, "with_format", None)
            per_column = []
            for name in columns:
                if with_format is not None:
                    # Arrow → Python in one call; iterating a datasets Column is ~100× slower.
                    values = with_format("arrow")[name].to_pylist()
                else:
                    values = dataset[name]
                per_column.append([_digest(_value_text(value)) for value in values])
            if not per_column:
                return np.zeros((len(dataset), 0), dtype=np.int64)
            return np.asarray(per_column, dtype=np.int64).T.copy()

        rows = [[_digest(_value_text(value)) for value in self._row_values(dataset[i])] for i in range(len(dataset))]
        width = max((len(row) for row in rows), default=0)
        # Pad a short row with one of its own digests: set semantics make the repeat harmless.
        digests = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            if row:
                digests[i] = row + [row[0]] * (width - len(row))
        return digests

    def _digest_rows_with_map(self, columns: list[str]) -> np.ndarray:
        """The digests of ``columns`` computed by ``datasets.map`` in ``precompute_num_proc`` processes."""
        digested = self.dataset.map(
            _digest_batch,
            batched=True,
            batch_size=self.precompute_batch_size,
            num_proc=self.precompute_num_proc if len(self.dataset) > 1 else None,
            remove_columns=list(self.dataset.column_names),
            fn_kwargs={"columns": columns},
            desc="Hashing dataset values",
        )
        return np.asarray(digested.with_format("numpy")["__digests"], dtype=np.int64).reshape(len(self.dataset), -1)

    def _row_values(self, row: Any) -> list[Any]:
        if isinstance(row, dict):
            return [value for key, value in row.items() if key not in self._ignored_columns]
        if isinstance(row, (list, tuple)):
            return list(row)
        return [row]


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _digest_batch(batch: dict[str, list[Any]], columns: list[str]) -> dict[str, list[list[int]]]:
    # Module level: datasets.map pickles it for its worker processes.
    return {"__digests": [list(row) for row in zip(*([_digest(_value_text(v)) for v in batch[c]] for c in columns))]}


def _value_text(value: Any) -> str:
    """The text a value is compared by (sentence-transformers' rule for plain values, lists and dicts)."""
    if isinstance(value, _PLAIN_VALUE_TYPES):
        return str(value)
    if isinstance(value, (list, tuple)):
        if all(isinstance(item, _PLAIN_VALUE_TYPES) for item in value):
            return str(value)
        return "[" + ", ".join(_value_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: {_value_text(item)}" for key, item in value.items()) + "}"
    # datasets' audio/video decoders pickle a fresh storage key; they carry the encoded source (as in ST).
    encoded = getattr(value, "_hf_encoded", None)
    if encoded is not None:
        value = encoded
    try:
        # str() of arbitrary objects often embeds a memory address, fresh on each access; pickle is content.
        return hashlib.sha256(pickle.dumps(value)).hexdigest()
    except Exception:  # noqa: BLE001 - unpicklable values fall back to str(), as sentence-transformers does
        return str(value)


def _digest(text: str) -> int:
    # 64-bit, process-independent (unlike hash()), so every DDP process computes the same batches.
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little", signed=True
    )
