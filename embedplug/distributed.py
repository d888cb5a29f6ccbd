"""Gathering embeddings across torch.distributed ranks, with gradients, for the in-batch losses.

Every rank embeds its own rows; a loss with ``gather_across_devices=True`` gathers each column
(anchors, positives, negatives, labels) from every rank and computes its local anchors against all
candidates. The gathered tensor of a column is the ranks' rows in rank order, and several columns
are concatenated column by column (all positives, then all first negatives, ...), never interleaved
per rank: :class:`GatheredLayout` is the one place that maps a rank's row to its gathered column.

Gradients: the all-gather's backward (``torch.distributed.nn.functional.all_gather``) sums, on the
rank that owns a row, the gradients every rank computed for it. DDP then averages the parameter
gradients over the ranks, so a loss that wants DDP to produce the gradient of a global loss ``L``
must make the gradients reaching rank r's rows sum to ``world_size * dL/d(rows of r)``; each loss
says in its docstring how its per-rank value is scaled for that.

gloo's ``all_gather`` needs equal tensor sizes on every rank (a mismatch hangs or crashes), so the
row counts (and widths) are exchanged first; rows are padded to the largest count, gathered and the
padding dropped again, and a mismatch of widths is a clear error naming every rank's shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@dataclass(frozen=True)
class GatheredLayout:
    """Where every rank's rows sit in gathered columns.

    ``sizes[r]`` is the number of rows rank r contributed (per column: all columns of one rank have
    the same rows). A column gathered by :func:`gather_with_grad` is ``sum(sizes)`` rows, rank 0's
    first; ``k`` such columns concatenated (``torch.cat(gathered_columns)``) put row ``i`` of rank
    ``r`` of column ``c`` at :meth:`column_index` ``c * total + offsets[r] + i``.
    """

    sizes: tuple[int, ...]
    rank: int

    @property
    def world_size(self) -> int:
        return len(self.sizes)

    @property
    def total(self) -> int:
        """Rows of one gathered column."""
        return sum(self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        """First gathered row of each rank within one column."""
        starts, running = [], 0
        for size in self.sizes:
            starts.append(running)
            running += size
        return tuple(starts)

    @property
    def offset(self) -> int:
        """First gathered row of this rank within one column."""
        return self.offsets[self.rank]

    @property
    def local_size(self) -> int:
        return self.sizes[self.rank]

    @property
    def equal_sizes(self) -> bool:
        return len(set(self.sizes)) == 1

    def column_index(self, column: int, rank: int, row: int) -> int:
        """Index of (``column``, ``rank``, ``row``) in the concatenation of gathered columns."""
        if not 0 <= row < self.sizes[rank]:
            raise IndexError(f"rank {rank} has {self.sizes[rank]} rows, no row {row}")
        return column * self.total + self.offsets[rank] + row

    def local_indices(self, column: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
        """[local_size] int64: this rank's rows of ``column`` in the concatenated gathered columns."""
        start = column * self.total + self.offset
        return torch.arange(start, start + self.local_size, device=device)

    def local_first(self, gathered: torch.Tensor) -> torch.Tensor:
        """One gathered column [total, ...] reordered with this rank's rows first (then the other
        ranks' in rank order), so that candidate ``i`` is local row ``i``'s own."""
        start, stop = self.offset, self.offset + self.local_size
        if start == 0:
            return gathered
        return torch.cat([gathered[start:stop], gathered[:start], gathered[stop:]])

    def scale_for_local_mean(self) -> float:
        """Factor turning a mean over this rank's rows into its share of the global mean under DDP:
        ``world_size * local_size / total`` (1 with equal sizes). The ranks' scaled values average to
        the global mean and their gradients, summed by the all-gather and averaged by DDP, to its gradient."""
        return self.world_size * self.local_size / self.total


def _all_gather_shapes(tensor: torch.Tensor, failed: bool) -> list[tuple[tuple[int, ...], bool]]:
    # One small collective carries every rank's shape and whether its own input checks failed, so
    # that a rank rejecting its input makes every rank raise instead of leaving them in a collective.
    shape = list(tensor.shape) if isinstance(tensor, torch.Tensor) else []
    local = torch.tensor(shape + [0] * (3 - len(shape)) + [len(shape), int(failed)], dtype=torch.int64)
    if dist.get_backend() != dist.Backend.GLOO and isinstance(tensor, torch.Tensor):
        local = local.to(tensor.device)
    shapes = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, local)
    result = []
    for values in (shape.tolist() for shape in shapes):
        result.append((tuple(values[: values[3]]), bool(values[4])))
    return result


def exchange_layout(tensor: torch.Tensor, caller: str, local_error: Exception | None = None) -> GatheredLayout:
    """Every rank's row count of ``tensor`` (at most 3-D), checking that the other dimensions agree.

    A collective: every rank must call it, also a rank whose input checks failed (``local_error``):
    that rank re-raises its error and every other rank raises a ValueError naming the failed ranks,
    so no rank is left waiting in a later collective. Raises ValueError naming every rank's shape
    when the trailing dimensions differ (gathering them would hang or crash in the backend).
    """
    if local_error is None and tensor.dim() > 3:
        local_error = ValueError(f"{caller}: can only gather tensors of at most 3 dimensions, got {tuple(tensor.shape)}")
    exchanged = _all_gather_shapes(tensor, local_error is not None)
    if local_error is not None:
        raise local_error
    failed = [rank for rank, (_, rank_failed) in enumerate(exchanged) if rank_failed]
    if failed:
        raise ValueError(f"{caller}: rank(s) {failed} rejected their input (see their error); no loss computed")
    shapes = [shape for shape, _ in exchanged]
    if len({shape[1:] for shape in shapes}) != 1 or len({len(shape) for shape in shapes}) != 1:
        listed = ", ".join(f"rank {rank}: {shape}" for rank, shape in enumerate(shapes))
        raise ValueError(f"{caller}: every rank must gather tensors of the same width, got {listed}")
    return GatheredLayout(sizes=tuple(shape[0] for shape in shapes), rank=dist.get_rank())


def gather_with_grad(tensor: torch.Tensor, layout: GatheredLayout) -> torch.Tensor:
    """All ranks' ``tensor`` rows [layout.total, ...] in rank order; gradients flow back to every rank's rows.

    Rows are padded to the largest rank's count for the collective (gloo needs equal sizes) and the
    padding dropped afterwards. A collective: every rank must call it, and, when the result is
    differentiated, run the backward too (the backward is an all-to-all).
    """
    from torch.distributed.nn.functional import all_gather

    if tensor.shape[0] != layout.local_size:
        raise ValueError(f"gather_with_grad: tensor has {tensor.shape[0]} rows, the layout says {layout.local_size}")
    padded_rows = max(layout.sizes)
    padded = tensor
    if tensor.shape[0] < padded_rows:
        padding = tensor.new_zeros((padded_rows - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, padding])
    if tensor.requires_grad:
        pieces = all_gather(padded.contiguous())
    else:
        pieces = [torch.empty_like(padded) for _ in range(layout.world_size)]
        dist.all_gather(pieces, padded.contiguous())
    pieces = [piece[:size] for piece, size in zip(pieces, layout.sizes)]
    # The local piece is the local tensor itself, so its own gradient path needs no collective.
    pieces[layout.rank] = tensor
    return torch.cat(pieces)


def gather_columns(
    columns: Sequence[torch.Tensor], caller: str, validate: Callable[[], None] | None = None
) -> tuple[list[torch.Tensor], GatheredLayout]:
    """Each [B, ...] column gathered over the ranks ([total, ...] each), and their layout.

    ``validate`` runs this rank's input checks first (raising TypeError/ValueError); its failure is
    shared with the other ranks in the size exchange (see :func:`exchange_layout`). All columns of
    a rank must have the same rows: one layout serves them all, and the sizes are exchanged once.
    """
    columns = list(columns)
    local_error = None
    try:
        if validate is not None:
            validate()
        if len({column.shape[0] for column in columns}) != 1:
            raise ValueError(
                f"{caller}: every column must have the same number of rows, got {[c.shape[0] for c in columns]}"
            )
    except (TypeError, ValueError) as error:
        local_error = error
    layout = exchange_layout(columns[0], caller, local_error)
    return [gather_with_grad(column, layout) for column in columns], layout


def require_equal_sizes(layout: GatheredLayout, caller: str) -> None:
    """ValueError naming every rank's batch size unless they are equal."""
    if not layout.equal_sizes:
        listed = ", ".join(f"rank {rank}: {size}" for rank, size in enumerate(layout.sizes))
        raise ValueError(
            f"{caller}: gather_across_devices needs the same batch size on every rank, got {listed}; "
            "drop the last partial batch (drop_last=True / dataloader_drop_last=True)"
        )


def gather_labelled_batch(
    embeddings: torch.Tensor, labels: torch.Tensor, caller: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's [B_r, D] embeddings (with gradients) and their labels, gathered in rank order:
    ([sum B_r, D], [sum B_r] labels in their own dtype). Per-rank sizes may differ; bad local input is raised
    on every rank. Float labels are gathered as values and numbered afterwards, by the loss: ids numbered
    per rank would give one value different ids on different ranks."""
    from embedplug._validation import check_embeddings, check_label_tensor

    flat_labels = labels

    def validate() -> None:
        nonlocal flat_labels
        check_embeddings(embeddings, caller)
        flat_labels = check_label_tensor(labels, embeddings, caller)

    (gathered_embeddings,), layout = gather_columns([embeddings], caller, validate=validate)
    return gathered_embeddings, gather_with_grad(flat_labels, layout)
