"""Reference semi-hard triplet loss: sentence-transformers' algorithm, summed per anchor."""

from __future__ import annotations

import torch

from embedplug.reference.pairwise import pairwise_distances


def _masked_maximum(data: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ST's ``_masked_maximum`` along dim 1: max_j ((data - rowmin) * mask) + rowmin, [N, 1]."""
    row_min, _ = data.min(1, keepdim=True)
    masked, _ = ((data - row_min) * mask).max(1, keepdim=True)
    return masked + row_min


def semi_hard_from_distance_matrix(pairwise: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Per-anchor semi-hard sums on a precomputed [N, N] distance matrix.

    Follows sentence-transformers' ``BatchSemiHardTripletLoss`` (stable sort + searchsorted for
    the smallest negative distance strictly above d_ap, the masked maximum when there is none,
    ``torch.max(loss * mask, 0)``), then sums each anchor's row.

    Returns:
        loss_sums: [N], differentiable w.r.t. ``pairwise``; the ST loss is
        ``loss_sums.sum() / max(number of positive pairs, 1e-16)``.
    """
    n = labels.shape[0]
    column = labels.view(-1, 1)
    adjacency = column == column.t()
    negatives = pairwise.masked_fill(adjacency, torch.inf)
    sorted_negatives = negatives.sort(dim=1, stable=True).values
    positions = torch.searchsorted(sorted_negatives.detach().contiguous(), pairwise.detach().contiguous(), right=True)
    outside = sorted_negatives.gather(1, positions.clamp(max=n - 1))
    inside = _masked_maximum(pairwise, ~adjacency)
    semi_hard = torch.where(torch.isfinite(outside), outside, inside)
    loss = (pairwise - semi_hard) + margin
    positive_mask = adjacency.to(pairwise.dtype) - torch.eye(n, dtype=pairwise.dtype, device=pairwise.device)
    return torch.max(loss * positive_mask, pairwise.new_zeros(1)).sum(1)


def semi_hard_triplet_loss_forward(
    embeddings: torch.Tensor, labels: torch.Tensor, distance: str, margin: float
) -> torch.Tensor:
    """Reference for ``embedplug::semi_hard_triplet_loss_forward``: [N, D], [N] -> [N]."""
    return semi_hard_from_distance_matrix(pairwise_distances(embeddings, distance), labels, margin)
