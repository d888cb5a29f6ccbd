"""Mining in several processes: each rank embeds and searches its share, and every rank gets the whole result.

Shares are contiguous ranges (rank r of W takes rows ``[r*n//W, (r+1)*n//W)``), so gathering the
parts in rank order rebuilds the single-process order. Gathering goes through
``torch.distributed.all_gather_object``, which works on gloo and nccl and with parts of unequal size.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Shards:
    """This process's place among ``world_size`` mining processes: which share of the rows it embeds and
    searches (:meth:`span`), and how the shares come back together (:meth:`gather`).

    Pass it as ``mine(..., shards=Shards.from_process_group())`` under torchrun; ``None`` (one process)
    mines everything locally. Every rank must make the same calls, since :meth:`gather` is a collective.

    Attributes:
        rank: this process's rank, 0 .. world_size - 1.
        world_size: the number of processes sharing the work.
    """

    rank: int
    world_size: int

    @classmethod
    def from_process_group(cls) -> Shards | None:
        """The current process group's shares, or None outside one (or in a group of one)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        return cls(dist.get_rank(), dist.get_world_size())

    def span(self, count: int, rank: int | None = None) -> tuple[int, int]:
        """``(start, stop)`` of ``rank``'s share (default: this rank's) of ``count`` rows."""
        rank = self.rank if rank is None else rank
        return rank * count // self.world_size, (rank + 1) * count // self.world_size

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (a collective: every rank must call it)."""
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered
