"""Batch-all triplet loss (Hermans et al. 2017) on raw embeddings."""

from __future__ import annotations

from collections.abc import Callable

import torch

from embedplug._validation import (
    check_distance,
    check_distance_matrix,
    check_embeddings,
    check_finite_number,
    check_labels,
    warns_non_finite_input,
)
from embedplug.distances import kernel_distance
from embedplug.ops.batch_all import batch_all_from_distance_matrix, batch_all_triplet_loss_forward, reduce_batch_all_sums


@warns_non_finite_input
def batch_all_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 5.0,
    distance: str | Callable[[torch.Tensor], torch.Tensor] = "euclidean",
) -> torch.Tensor:
    """Mean of ``max((d_ap - d_an) + margin, 0)`` over the valid triplets whose loss exceeds 1e-16.

    Args:
        embeddings: [N, D] floating tensor.
        labels: [N] integer class ids (any shape with N elements).
        margin: the triplet margin.
        distance: "euclidean", "squared_euclidean", "cosine", one of sentence-transformers'
            ``BatchHardTripletLossDistanceFunction`` functions (run by the fused kernel, O(N) extra
            memory), or any callable mapping [N, D] to an [N, N] distance matrix (run by the
            reference path).

    Returns:
        A scalar tensor equal to sentence-transformers' ``BatchAllTripletLoss``: the sum over all
        valid (anchor, positive, negative) triplets divided by (number of triplets with loss
        > 1e-16) + 1e-16, so 0 when no triplet is active.
    """
    caller = "batch_all_triplet_loss"
    check_embeddings(embeddings, caller)
    labels = check_labels(labels, embeddings, caller)
    margin = check_finite_number(margin, "margin", caller)
    check_distance(distance, "distance", caller)
    name = kernel_distance(distance)
    if name is not None:
        loss_sums, counts = batch_all_triplet_loss_forward(embeddings, labels, name, margin)
    else:
        loss_sums, counts = batch_all_from_distance_matrix(
            check_distance_matrix(distance(embeddings), embeddings, caller), labels, margin
        )
    return reduce_batch_all_sums(loss_sums, counts)
