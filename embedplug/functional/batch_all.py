"""Batch-all triplet loss (Hermans et al. 2017) on raw embeddings."""

from __future__ import annotations

from collections.abc import Callable

import torch

from embedplug._validation import (
    check_distance,
    check_embeddings,
    check_finite_number,
    check_labels,
    warns_non_finite_input,
)
from embedplug.functional._pairwise_path import kernel_or_matrix
from embedplug.ops.batch_all import batch_all_from_distance_matrix, batch_all_triplet_loss_forward, reduce_batch_all_sums
from embedplug.st_version import StSemantics


@warns_non_finite_input
def batch_all_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 5.0,
    distance: str | Callable[[torch.Tensor], torch.Tensor] = "euclidean",
    *,
    st_version: str | StSemantics | None = None,
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
        st_version: the sentence-transformers release whose cosine distance to follow ("6.2",
            "6.3"; None, the default: the installed one, see :mod:`embedplug.st_version`).

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
    name, matrix = kernel_or_matrix(embeddings, distance, caller, st_version)
    if name is not None:
        loss_sums, counts = batch_all_triplet_loss_forward(embeddings, labels, name, margin)
    else:
        loss_sums, counts = batch_all_from_distance_matrix(matrix, labels, margin)
    return reduce_batch_all_sums(loss_sums, counts)
