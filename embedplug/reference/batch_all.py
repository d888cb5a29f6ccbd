"""Reference batch-all triplet loss: sentence-transformers' algorithm, summed per anchor."""

from __future__ import annotations

import torch

from embedplug.reference.pairwise import pairwise_distances

POSITIVE_TRIPLET_THRESHOLD = 1e-16


def batch_all_from_distance_matrix(
    pairwise: torch.Tensor, labels: torch.Tensor, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor batch-all sums on a precomputed [N, N] distance matrix.

    Follows sentence-transformers' ``BatchAllTripletLoss`` line by line (one [pairs, N] loss block
    over the anchor-positive pairs, same masking and clamping), then sums its rows per anchor.

    Returns:
        loss_sums: [N], differentiable w.r.t. ``pairwise`` — per anchor the sum of
            ``max((d_ap - d_an) + margin, 0)`` over its valid triplets (0 without positives).
        counts: [N] int64 — per anchor the number of triplets whose loss exceeds 1e-16.
    """
    n = labels.shape[0]
    not_self = ~torch.eye(n, dtype=torch.bool, device=labels.device)
    anchor_index, positive_index = ((labels.unsqueeze(0) == labels.unsqueeze(1)) & not_self).nonzero(as_tuple=True)
    anchor_positive = pairwise[anchor_index, positive_index].unsqueeze(1)
    triplet = anchor_positive - pairwise[anchor_index] + margin
    negative_mask = labels[anchor_index].unsqueeze(1) != labels.unsqueeze(0)
    triplet = negative_mask.to(triplet.dtype) * triplet
    triplet = torch.where(triplet < 0, torch.zeros_like(triplet), triplet)
    loss_sums = pairwise.new_zeros(n).index_add(0, anchor_index, triplet.sum(1))
    counts = torch.zeros(n, dtype=torch.int64, device=labels.device).index_add(
        0, anchor_index, (triplet > POSITIVE_TRIPLET_THRESHOLD).sum(1)
    )
    return loss_sums, counts


def batch_all_triplet_loss_forward(
    embeddings: torch.Tensor, labels: torch.Tensor, distance: str, margin: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for ``embedplug::batch_all_triplet_loss_forward``: [N, D], [N] -> ([N], [N] int64)."""
    return batch_all_from_distance_matrix(pairwise_distances(embeddings, distance), labels, margin)
