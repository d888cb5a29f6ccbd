"""P×K class-balanced batches: P distinct classes, K samples of each, in every batch.

Batch-mining losses (batch-hard / batch-all / semi-hard triplet) need every anchor to have a positive and a
negative in its batch; random batches over many small classes rarely give either, and the loss is then zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch

from embedplug.samplers._base import BatchSamplerBase
from embedplug.samplers._labels import LabelGroups, find_label_column, group_labels, read_label_column
from embedplug.samplers._weighted_pool import WeightedPool

SmallClasses = Literal["replace", "skip"]
ClassWeighting = Literal["inverse_usage", "uniform"]

# Integer scale of the class weights: weight = _WEIGHT_SCALE // (1 + times used), exact integer arithmetic.
_WEIGHT_SCALE = 1 << 32
# Batches planned per vectorised gather: large enough to amortise numpy calls, small enough that the first
# batch of an epoch is ready in milliseconds.
_PLAN_BLOCK = 1024


class PKBatchSampler(BatchSamplerBase):
    """Yields batches of ``P = batch_size // k`` distinct classes × ``K = k`` samples each.

    Each batch is a list of ``P * K`` dataset indices made of P groups of K consecutive indices, one group per
    class. Within a group the K samples are distinct whenever the class has at least K samples.

    **How an epoch is built.** Every class's samples are shuffled (per epoch) and cut into *chunks* of K:
    a class of ``n`` samples has ``ceil(n / K)`` chunks, the last one completed with other samples of the same
    class (so it still holds K distinct samples). A class with fewer than K samples is either repeated
    cyclically to K (``small_classes="replace"``: each of its samples appears ``floor(K/n)`` or ``ceil(K/n)``
    times) or left out (``"skip"``). Each batch then picks P classes, each contributing its next chunk:

    * classes with chunks left are drawn first; a class that would otherwise run out of batches to place its
      remaining chunks in is taken unconditionally, which is what guarantees that every chunk is placed;
    * when fewer than P classes have chunks left, the batch is filled with further chunks (a new cyclic pass
      over their samples) of classes that already placed all theirs;
    * among the candidates, a class is drawn with probability proportional to ``1 / (1 + times used in this
      epoch)`` (``class_weighting="inverse_usage"``, the scheme of classic hand-written batch-hard loops, so
      rarely used classes get their turn) or uniformly (``"uniform"``).

    **Length.** ``len(sampler)`` is the number of batches of one epoch (for this process when
    ``num_replicas > 1``): the fewest complete P×K batches in which every sample of every qualifying class
    appears at least once, given that a class appears at most once per batch::

        chunks = sum over qualifying classes c of ceil(n_c / K)
        batches = max(ceil(chunks / P), max_c ceil(n_c / K))   # rounded up to a multiple of num_replicas
        len = batches // num_replicas

    Every batch is complete, so ``drop_last`` has no effect. A class much larger than all others stretches the
    epoch (it can give at most one chunk per batch); the other slots are then filled by repeated classes.

    **Determinism.** The order is a pure function of ``(seed, epoch)``: call :meth:`set_epoch` (the trainer
    does) to move to the next epoch's order. ``generator`` is accepted for signature compatibility and unused.

    **Distributed.** Under sentence-transformers' trainer keep ``num_replicas=1``: accelerate wraps the sampler
    and deals its batches round-robin to the processes (``BatchSamplerShard``), so every process gets
    different, complete P×K batches and together they cover the epoch (when such a run resumes from a
    mid-epoch checkpoint, add :class:`~embedplug.samplers.SamplerEpochCallback`). In a hand-written DDP loop without
    accelerate, pass ``num_replicas=world_size, rank=rank``: every process plans the same global epoch from
    ``(seed, epoch)`` and keeps batches ``rank, rank + num_replicas, ...``; all processes get the same number
    of batches (no process waits on a collective that never comes).

    Args:
        dataset: the training dataset; the labels are read from its label column unless ``labels`` is given.
        batch_size: ``P * K`` samples per batch; must be divisible by ``k``.
        drop_last: accepted for signature compatibility; every batch is complete.
        valid_label_columns: candidate label column names; the first one the dataset has is used (the rule
            sentence-transformers' trainer and data collator use).
        generator: accepted for signature compatibility; randomness comes from ``(seed, epoch)``.
        seed: non-negative integer seed.
        k: samples per class per batch (K), at least 2. Defaults to 4.
        small_classes: ``"replace"`` (default) repeats the samples of a class with fewer than K samples;
            ``"skip"`` never draws such classes.
        class_weighting: ``"inverse_usage"`` (default) or ``"uniform"``, see above.
        num_replicas: processes that split the epoch among themselves (see *Distributed*). Defaults to 1.
        rank: this process's index in ``0..num_replicas-1``.
        labels: one hashable label per sample, used instead of reading a label column.

    Raises:
        ValueError: ``batch_size`` not divisible by ``k``, P or K below 2, fewer than P classes with enough
            samples, no label column, or an unknown option value.
        TypeError: labels that are not hashable.
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
        k: int = 4,
        small_classes: SmallClasses = "replace",
        class_weighting: ClassWeighting = "inverse_usage",
        num_replicas: int = 1,
        rank: int = 0,
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
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise ValueError(f"k (samples per class per batch) must be an integer >= 2, got {k!r}.")
        if self.batch_size % k:
            raise ValueError(
                f"batch_size={self.batch_size} is not divisible by k={k}: PKBatchSampler builds batches of "
                f"P classes x K={k} samples, so batch_size must be a multiple of k."
            )
        if self.batch_size // k < 2:
            raise ValueError(
                f"batch_size={self.batch_size} with k={k} gives P={self.batch_size // k} class per batch; "
                "P must be >= 2, or no anchor has a negative in its batch."
            )
        if small_classes not in ("replace", "skip"):
            raise ValueError(f"small_classes must be 'replace' or 'skip', got {small_classes!r}.")
        if class_weighting not in ("inverse_usage", "uniform"):
            raise ValueError(f"class_weighting must be 'inverse_usage' or 'uniform', got {class_weighting!r}.")
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive integer, got {num_replicas!r}.")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be an integer in [0, {num_replicas - 1}], got {rank!r}.")

        self.k = int(k)
        self.p = self.batch_size // self.k
        self.small_classes = small_classes
        self.class_weighting = class_weighting
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)

        if labels is None:
            labels = read_label_column(dataset, find_label_column(dataset, valid_label_columns))
        elif dataset is not None and hasattr(dataset, "__len__") and len(labels) != len(dataset):
            raise ValueError(f"labels has {len(labels)} entries but the dataset has {len(dataset)} samples.")
        self.label_groups: LabelGroups = group_labels(labels)
        self._prepare_classes()

    @classmethod
    def from_labels(
        cls,
        labels: Sequence[Any] | np.ndarray | torch.Tensor,
        p: int,
        k: int = 4,
        seed: int = 0,
        **options: Any,
    ) -> PKBatchSampler:
        """Build a sampler straight from per-sample labels, for ``DataLoader(dataset, batch_sampler=...)``.

        Args:
            labels: one hashable label per sample of the dataset the DataLoader reads.
            p: classes per batch (P).
            k: samples per class per batch (K).
            seed: non-negative integer seed.
            **options: ``small_classes``, ``class_weighting``, ``num_replicas``, ``rank``.
        """
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 2:
            raise ValueError(f"p (classes per batch) must be an integer >= 2, got {p!r}.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k (samples per class per batch) must be an integer >= 2, got {k!r}.")
        return cls(None, batch_size=int(p) * int(k), drop_last=False, seed=seed, k=k, labels=labels, **options)

    def _prepare_classes(self) -> None:
        groups = self.label_groups
        if groups.num_samples == 0:
            raise ValueError("PKBatchSampler got no samples (the labels are empty).")
        min_size = self.k if self.small_classes == "skip" else 1
        # "Qualifying" classes are the ones the sampler ever draws; the plan works on their positions 0..E-1.
        self._class_ids = np.flatnonzero(groups.sizes >= min_size).astype(np.int64)
        if self._class_ids.size < self.p:
            if self.small_classes == "skip":
                detail = f"only {self._class_ids.size} of the {groups.num_classes} classes have >= {self.k} samples"
                remedy = "Lower P (batch_size // k), lower k, or use small_classes='replace'."
            else:
                # Every class already qualifies: only a smaller P (or more classes in the data) helps.
                detail = f"the labels have only {groups.num_classes} distinct classes"
                remedy = (
                    f"Lower P = batch_size // k to at most {groups.num_classes} (a batch_size of at most "
                    f"{groups.num_classes * self.k} with k={self.k}), or use data with more classes."
                )
            raise ValueError(
                f"PKBatchSampler needs at least P={self.p} classes with enough samples for batches of "
                f"P={self.p} x K={self.k}, but {detail} (small_classes={self.small_classes!r}). {remedy}"
            )
        self._sizes = groups.sizes[self._class_ids]
        self._offsets = groups.offsets[self._class_ids]
        self._chunks = -(-self._sizes // self.k)  # ceil(n / K), and 1 for a class smaller than K
        total_chunks = int(self._chunks.sum())
        batches = max(math.ceil(total_chunks / self.p), int(self._chunks.max()))
        self._global_batches = -(-batches // self.num_replicas) * self.num_replicas

    def __len__(self) -> int:
        """Batches per epoch for this process; see the class docstring for the definition."""
        return self._global_batches // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._numpy_rng()
        groups = self.label_groups
        # A uniformly random order inside every class: permute everything, then a stable sort by class keeps
        # each class's permuted order and puts class c at members' offsets again.
        permutation = rng.permutation(groups.num_samples)
        shuffled = permutation[np.argsort(groups.codes[permutation], kind="stable")]

        plan = self._plan_epoch(rng)
        window = np.arange(self.k, dtype=np.int64)
        for first_batch, class_positions, cursors in plan:
            num_batches = class_positions.shape[0] // self.p
            # This process's batches only: global batch b goes to rank b % num_replicas.
            global_batch = first_batch + np.arange(num_batches)
            mine = np.repeat((global_batch % self.num_replicas) == self.rank, self.p)
            class_positions, cursors = class_positions[mine], cursors[mine]
            if class_positions.size == 0:
                continue
            sizes = self._sizes[class_positions]
            # Chunks are cyclic windows over each class's shuffled samples: K distinct samples when n >= K.
            within_class = (cursors[:, None] + window[None, :]) % sizes[:, None]
            indices = shuffled[self._offsets[class_positions][:, None] + within_class]
            yield from indices.reshape(-1, self.p * self.k).tolist()

    def _plan_epoch(self, rng: np.random.Generator) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Choose the P classes of every batch, in blocks.

        Yields ``(first global batch, class positions, cursors)``: ``(batches * P,)`` arrays, batch-major, with
        each class's window start in its shuffled sample list.
        """
        num_classes, p, k = int(self._class_ids.size), self.p, self.k
        num_batches = self._global_batches
        sizes = self._sizes.tolist()
        remaining = self._chunks.tolist()
        uses = [0] * num_classes
        cursor = [0] * num_classes
        uniform_weights = self.class_weighting == "uniform"

        # Classes with chunks left, and classes that placed all theirs (drawn only to fill a batch).
        with_chunks = WeightedPool(np.full(num_classes, _WEIGHT_SCALE, dtype=np.int64))
        without_chunks = WeightedPool(np.zeros(num_classes, dtype=np.int64))
        # remaining chunks -> classes. With R batches to go, a class with R chunks left must be in this batch.
        by_remaining: dict[int, set[int]] = {}
        order = np.argsort(self._chunks, kind="stable")
        counts = self._chunks[order]
        bounds = np.flatnonzero(np.diff(counts)) + 1
        for chunk_count, members in zip(counts[np.r_[0, bounds]].tolist(), np.split(order, bounds)):
            by_remaining[chunk_count] = set(members.tolist())

        for first_batch in range(0, num_batches, _PLAN_BLOCK):
            block = min(_PLAN_BLOCK, num_batches - first_batch)
            # A fixed P uniforms per batch, whatever is drawn: the stream never depends on earlier branches.
            uniforms = rng.random(block * p).tolist()
            chosen_classes: list[int] = []
            chosen_cursors: list[int] = []
            for batch in range(block):
                batches_left = num_batches - (first_batch + batch)
                forced = by_remaining.pop(batches_left, None)
                chosen = sorted(forced) if forced else []
                for class_position in chosen:
                    with_chunks.set(class_position, 0)
                draw = batch * p
                # Removing a drawn class from its pool (weight 0) makes the P classes distinct.
                while len(chosen) < p and with_chunks.total:
                    class_position = with_chunks.draw(uniforms[draw])
                    draw += 1
                    with_chunks.set(class_position, 0)
                    chosen.append(class_position)
                fresh = len(chosen)
                while len(chosen) < p:
                    class_position = without_chunks.draw(uniforms[draw])
                    draw += 1
                    without_chunks.set(class_position, 0)
                    chosen.append(class_position)

                for slot, class_position in enumerate(chosen):
                    chosen_classes.append(class_position)
                    chosen_cursors.append(cursor[class_position])
                    cursor[class_position] = (cursor[class_position] + k) % sizes[class_position]
                    uses[class_position] += 1
                    weight = _WEIGHT_SCALE if uniform_weights else _WEIGHT_SCALE // (1 + uses[class_position])
                    if slot >= fresh:
                        without_chunks.set(class_position, weight)
                        continue
                    left = remaining[class_position]
                    if left != batches_left:  # forced classes were popped with their whole bucket
                        by_remaining[left].discard(class_position)
                    left -= 1
                    remaining[class_position] = left
                    if left:
                        by_remaining.setdefault(left, set()).add(class_position)
                        with_chunks.set(class_position, weight)
                    else:
                        without_chunks.set(class_position, weight)
            yield (
                first_batch,
                np.asarray(chosen_classes, dtype=np.int64),
                np.asarray(chosen_cursors, dtype=np.int64),
            )
