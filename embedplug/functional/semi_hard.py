"""Batch semi-hard triplet loss (Schroff et al. 2015, FaceNet) on raw embeddings."""

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
from embedplug.ops.semi_hard import (
    positive_pair_count,
    reduce_semi_hard_sums,
    semi_hard_from_distance_matrix,
    semi_hard_triplet_loss_forward,
)
from embedplug.st_version import StSemantics

__all__ = ["batch_semi_hard_triplet_loss", "positive_pair_count"]


@warns_non_finite_input
def batch_semi_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 5.0,
    distance: str | Callable[[torch.Tensor], torch.Tensor] = "euclidean",
    *,
    st_version: str | StSemantics | None = None,
) -> torch.Tensor:
    """Sum over anchor-positive pairs of ``max((d_ap - d_semi_hard) + margin, 0)`` / number of pairs.

    The semi-hard negative of a pair is the nearest negative strictly farther than the positive
    (first index on ties); without one, the anchor's farthest negative (its nearest sample when it
    has no negative at all).

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
        A scalar tensor equal to sentence-transformers' ``BatchSemiHardTripletLoss`` (the number of
        positive pairs is clamped at 1e-16, so a batch without pairs gives 0).
    """
    caller = "batch_semi_hard_triplet_loss"
    check_embeddings(embeddings, caller)
    labels = check_labels(labels, embeddings, caller)
    margin = check_finite_number(margin, "margin", caller)
    check_distance(distance, "distance", caller)
    name, matrix = kernel_or_matrix(embeddings, distance, caller, st_version)
    if name is not None:
        loss_sums = semi_hard_triplet_loss_forward(embeddings, labels, name, margin)
    else:
        loss_sums = semi_hard_from_distance_matrix(matrix, labels, margin)
    return reduce_semi_hard_sums(loss_sums, labels)

