"""Reference hardest off-diagonal similarity: the semantics of ``embedplug::hardest_off_diagonal_similarity``."""

from __future__ import annotations

import torch


def hardest_off_diagonal_similarity(anchors: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor i, ``max_{j != i} <anchors[i], candidates[j]>`` and its j, on the full [N, M] matrix.

    torch.max's order (what sentence-transformers' MegaBatchMarginLoss uses): a NaN wins, ties go to the
    smallest j. ``(-inf, -1)`` for an anchor with no j != i (M = 0, or M = 1 and i = 0).

    Args:
        anchors: [N, D]; candidates: [M, D], same dtype and device.

    Returns:
        values [N] (the inputs' dtype) and indices [N] int64; not differentiable.
    """
    with torch.no_grad():
        n, m = anchors.shape[0], candidates.shape[0]
        similarities = anchors @ candidates.T
        rows = torch.arange(n, device=anchors.device).unsqueeze(1)
        columns = torch.arange(m, device=anchors.device).unsqueeze(0)
        off_diagonal = rows != columns
        masked = similarities.masked_fill(~off_diagonal, -torch.inf)
        values = masked.amax(1) if m > 0 else similarities.new_full((n,), -torch.inf)
        # The first off-diagonal column holding the maximum (NaN counts as equal to NaN), so that a row
        # whose candidates are all -inf still points at a negative, never at its own positive.
        hit = off_diagonal & ((masked == values.unsqueeze(1)) | (masked.isnan() & values.isnan().unsqueeze(1)))
        has_negative = hit.any(1)
        indices = hit.to(torch.uint8).argmax(1) if m > 0 else torch.zeros(n, dtype=torch.long, device=anchors.device)
        indices = torch.where(has_negative, indices, torch.full_like(indices, -1))
        values = torch.where(has_negative, values, torch.full_like(values, -torch.inf))
    return values, indices
