"""Group-by-label batches with sentence-transformers' semantics, deterministic without a shared generator."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from embedplug.samplers._base import BatchSamplerBase
from embedplug.samplers._labels import LabelGroups, find_label_column, group_labels, read_label_column


class GroupByLabelBatchSampler(BatchSamplerBase):
    """Batches of ``batch_size`` samples in which every label present has at least 2 samples (and there are >= 2).

    The algorithm is sentence-transformers' ``GroupByLabelBatchSampler``: each label's samples are shuffled and
    trimmed to an even count, then labels take turns emitting 2 samples each (the turn order reshuffled every
    round, and consecutive pairs kept from sharing a label across a round boundary); the stream is cut into
    batches of ``batch_size`` and stops when fewer than 2 labels have samples left, so the largest label's tail
    is not used. With the same seed and epoch it yields exactly the batches sentence-transformers yields when
    given a ``torch.Generator``.

    What differs: randomness always comes from a local generator seeded with ``seed + epoch`` (the trainer's
    convention), so the order is reproducible even without a ``generator`` and never disturbs a shared one;
    labels are grouped with vectorised numpy; non-hashable labels are rejected with a clear error; labels can
    be given directly (``labels=`` / :meth:`from_labels`) for a plain ``DataLoader``.

    ``len(sampler)``: with ``L = 2 * sum_l min(pairs_l, second largest pairs)`` samples in the stream
    (``pairs_l = n_l // 2`` over labels with >= 2 samples), ``L // batch_size`` batches, plus one if
    ``drop_last`` is false and at least 4 samples are left over.

    Distributed: accelerate's ``BatchSamplerShard`` deals whole batches round-robin to the processes.

    Args:
        dataset: the training dataset; labels are read from its label column unless ``labels`` is given.
        batch_size: an even number >= 4.
        drop_last: drop the final, shorter batch.
        valid_label_columns: candidate label column names; the first one the dataset has is used.
        generator: accepted for signature compatibility; unused.
        seed: non-negative integer seed.
        labels: one hashable label per sample, used instead of reading a label column.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool = False,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
        *,
        labels: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
    ) -> None:
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        if self.batch_size < 4 or self.batch_size % 2 == 1:
            raise ValueError(f"batch_size must be an even number >= 4, but got {self.batch_size}.")
        if labels is None:
            labels = read_label_column(dataset, find_label_column(dataset, valid_label_columns))
        elif dataset is not None and hasattr(dataset, "__len__") and len(labels) != len(dataset):
            raise ValueError(f"labels has {len(labels)} entries but the dataset has {len(dataset)} samples.")
        self.label_groups: LabelGroups = group_labels(labels)

        # Labels with a pair to give, in order of first appearance (sentence-transformers' dict order).
        self._class_ids = np.flatnonzero(self.label_groups.sizes >= 2).tolist()
        if len(self._class_ids) < 2:
            raise ValueError(
                "GroupByLabelBatchSampler requires at least 2 distinct labels with >= 2 samples each, "
                f"but only {len(self._class_ids)} label(s) qualified."
            )
        pairs = sorted((self.label_groups.sizes[self._class_ids] // 2).tolist(), reverse=True)
        # The round-robin ends once one label is left: at the second-largest label's pair count.
        cap = pairs[1]
        self._stream_length = 2 * sum(min(pair_count, cap) for pair_count in pairs)

    @property
    def groups(self) -> dict[Any, list[int]]:
        """sentence-transformers' attribute: ``{label: sample indices}`` for every label with at least two
        samples, in order of first appearance (read-only here: batches come from ``label_groups``)."""
        classes = self.label_groups.classes
        return {classes[class_id]: self.label_groups.indices_of(class_id).tolist() for class_id in self._class_ids}

    @classmethod
    def from_labels(
        cls, labels: Sequence[Any] | np.ndarray | torch.Tensor, batch_size: int, seed: int = 0, drop_last: bool = False
    ) -> GroupByLabelBatchSampler:
        """Build a sampler from per-sample labels, for ``DataLoader(dataset, batch_sampler=...)``."""
        return cls(None, batch_size=batch_size, drop_last=drop_last, seed=seed, labels=labels)

    def __iter__(self) -> Iterator[list[int]]:
        generator = self._torch_generator()
        queues: dict[int, deque[int]] = {}
        for class_id in self._class_ids:
            indices = self.label_groups.indices_of(class_id)
            # Same generator calls, in the same order, as sentence-transformers: identical batches.
            permutation = torch.randperm(len(indices), generator=generator)[: len(indices) // 2 * 2]
            queues[class_id] = deque(indices[permutation.numpy()].tolist())

        remaining_labels = list(queues)
        batch: list[int] = []
        last_label = None
        while len(remaining_labels) >= 2:
            remaining_labels = [remaining_labels[i] for i in torch.randperm(len(remaining_labels), generator=generator)]
            # Keep the pair that ends one round and the pair that starts the next from sharing a label.
            if batch and remaining_labels[0] == last_label:
                remaining_labels[0], remaining_labels[1] = remaining_labels[1], remaining_labels[0]
            for label in remaining_labels:
                batch.append(queues[label].popleft())
                batch.append(queues[label].popleft())
                if len(batch) >= self.batch_size:
                    yield batch[: self.batch_size]
                    batch = batch[self.batch_size :]
            last_label = remaining_labels[-1]
            remaining_labels = [label for label in remaining_labels if queues[label]]

        # Pairs arrive round-robin, so 4 leftover samples already hold 2 labels with 2 samples each.
        if not self.drop_last and len(batch) >= 4:
            yield batch

    def __len__(self) -> int:
        num_batches = self._stream_length // self.batch_size
        if not self.drop_last and self._stream_length % self.batch_size >= 4:
            num_batches += 1
        return num_batches
