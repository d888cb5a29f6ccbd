"""A shuffling batch sampler whose order is a pure function of (seed, epoch)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler


class SeededShuffleBatchSampler(BatchSampler):
    """Shuffles the whole dataset once per epoch and yields consecutive batches of indices.

    Same ``(seed, epoch)``, same batches: in every process of a distributed run and after resuming
    from a checkpoint. Takes sentence-transformers' batch-sampler arguments, so the class itself can be
    passed as ``SentenceTransformerTrainingArguments(batch_sampler=...)``; the trainer calls
    :meth:`set_epoch` at the start of each epoch.

    Args:
        dataset: anything with ``len()``; only its size is used.
        batch_size: indices per batch.
        drop_last: drop the final batch when it is smaller than ``batch_size``.
        valid_label_columns: accepted for compatibility; a plain shuffle does not look at labels.
        generator: accepted for compatibility and deliberately unused: a shared, stateful generator
            would make the order depend on who consumed it before, not only on (seed, epoch).
        seed: non-negative base seed.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        # BatchSampler validates batch_size and drop_last; its sampler is unused since __iter__ draws its own order.
        super().__init__(range(len(dataset)), batch_size=batch_size, drop_last=drop_last)
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.num_samples = len(dataset)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        # A SeedSequence built from both numbers: ``seed + epoch`` would give (0, 1) and (1, 0) the same order.
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples).tolist()
        for start in range(0, self.num_samples, self.batch_size):
            batch = order[start : start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield batch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)
