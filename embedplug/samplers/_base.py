"""The base class every embedplug batch sampler derives from.

sentence-transformers' trainer only instantiates a class passed as ``batch_sampler=`` when
``issubclass(cls, DefaultBatchSampler)``, so when sentence-transformers is importable the base *is* a subclass of
its ``DefaultBatchSampler``. Without it (plain PyTorch loops, :meth:`from_labels`), the base falls back to
``torch.utils.data.BatchSampler`` with the same constructor signature and ``set_epoch``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler

try:  # sentence-transformers >= 5.x keeps its samplers in base/; older releases had a flat module.
    from sentence_transformers.base.sampler import DefaultBatchSampler as _DefaultBatchSampler
except ImportError:  # pragma: no cover - depends on the installed sentence-transformers
    try:
        from sentence_transformers.sampler import DefaultBatchSampler as _DefaultBatchSampler
    except ImportError:
        _DefaultBatchSampler = None

HAS_SENTENCE_TRANSFORMERS = _DefaultBatchSampler is not None


if _DefaultBatchSampler is None:

    class _DefaultBatchSampler(BatchSampler):  # type: ignore[no-redef]
        """Stand-in for sentence-transformers' ``DefaultBatchSampler`` (same signature, same ``set_epoch``)."""

        def __init__(
            self,
            dataset: Any,
            batch_size: int,
            drop_last: bool,
            valid_label_columns: list[str] | None = None,
            generator: torch.Generator | None = None,
            seed: int = 0,
        ) -> None:
            super().__init__(dataset, batch_size=batch_size, drop_last=drop_last)
            self.valid_label_columns = valid_label_columns
            self.generator = generator
            self.seed = seed
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch


class BatchSamplerBase(_DefaultBatchSampler):
    """Common constructor checks and per-epoch random sources.

    Every embedplug sampler yields whole batches (lists of dataset indices) and its order is a pure function of
    ``(seed, epoch)``: randomness comes from a *local* generator built from those two numbers at the start of
    each ``__iter__``, never from global RNG state nor from the ``generator`` the trainer passes in (that one
    is shared with other samplers, so reseeding or consuming it would couple them). ``generator`` is accepted
    for signature compatibility only.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        drop_last: bool = False,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        super().__init__(
            dataset,
            batch_size=int(batch_size),
            drop_last=bool(drop_last),
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=int(seed),
        )
        self.dataset = dataset
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``__iter__`` produces (the trainer calls this every epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}.")
        self.epoch = int(epoch)

    def _numpy_rng(self) -> np.random.Generator:
        # SeedSequence mixes both numbers, so (seed=0, epoch=1) and (seed=1, epoch=0) are unrelated streams.
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))

    def _torch_generator(self) -> torch.Generator:
        # sentence-transformers reseeds with ``seed + epoch``; its re-implemented samplers keep that convention
        # so that they produce exactly the batches sentence-transformers would for the same seed and epoch.
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return generator
