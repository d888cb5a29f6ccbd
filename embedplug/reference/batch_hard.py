"""Reference batch-hard mining: the semantics of ``embedplug::batch_hard_mining`` on a full matrix."""

from __future__ import annotations

import torch

from embedplug.reference.pairwise import pairwise_distances


def mine_from_distance_matrix(pairwise: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-hard selection on a precomputed [N, N] distance matrix.

    Mirrors sentence-transformers' BatchHardTripletLoss: the hardest positive is
    ``max_j mask_pos * d`` and the hardest negative ``min_j d + rowmax * (1 - mask_neg)``; when a
    same-label column wins that min, the negative term is ``d[a, j] + rowmax`` and both carry
    gradient. Returns ``distances`` [N, 3] (differentiable w.r.t. ``pairwise``) and ``indices``
    [N, 3] int64 for (hardest positive, negative candidate, row-max offset); -1 marks an unused
    slot whose distance is 0. Rows with any non-finite distance are NaN, as ST's loss becomes.
    """
    n = pairwise.shape[0]
    rows = torch.arange(n, device=pairwise.device)
    same_label = labels.unsqueeze(0) == labels.unsqueeze(1)
    positive_mask = same_label & ~torch.eye(n, dtype=torch.bool, device=pairwise.device)
    negative_mask = ~same_label
    with torch.no_grad():
        positive_value, positive_index = (positive_mask.to(pairwise.dtype) * pairwise).max(1)
        row_max, row_max_index = pairwise.max(1)
        shifted = pairwise + row_max.unsqueeze(1) * (1.0 - negative_mask.to(pairwise.dtype))
        _, negative_index = shifted.min(1)
        has_positive = (positive_value > 0) & positive_mask[rows, positive_index]
        negative_is_true = negative_mask[rows, negative_index]
        non_finite = ~torch.isfinite(pairwise).all(1)

    minus_one = torch.full_like(positive_index, -1)
    indices = torch.stack(
        [
            torch.where(has_positive, positive_index, minus_one),
            negative_index,
            torch.where(negative_is_true, minus_one, row_max_index),
        ],
        dim=1,
    )
    gathered = pairwise.gather(1, indices.clamp_min(0))
    distances = torch.where(indices >= 0, gathered, torch.zeros_like(gathered))
    # NaN that still depends on the bad row, so its gradient is NaN as well (as the fused backward
    # gives); adding, not multiplying, keeps NaN out of the good rows' gradients.
    bad_row_sum = torch.where(non_finite, pairwise.sum(1), torch.zeros_like(pairwise[:, 0]))
    poisoned = (bad_row_sum + float("nan")).unsqueeze(1).expand_as(distances)
    distances = torch.where(non_finite.unsqueeze(1), poisoned, distances)
    indices = torch.where(
        non_finite.unsqueeze(1), torch.stack([rows, rows, minus_one], dim=1), indices
    )
    return distances, indices


def batch_hard_mining(
    embeddings: torch.Tensor, labels: torch.Tensor, distance: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for ``embedplug::batch_hard_mining``: [N, D], [N] -> ([N, 3], [N, 3] int64)."""
    return mine_from_distance_matrix(pairwise_distances(embeddings, distance), labels)
