"""Batch-hard triplet loss (Hermans et al. 2017) on raw embeddings."""

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
from embedplug.ops import batch_hard_mining
from embedplug.ops.batch_hard import mine_from_distance_matrix
from embedplug.st_version import StSemantics


@warns_non_finite_input
def batch_hard_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 5.0,
    distance: str | Callable[[torch.Tensor], torch.Tensor] = "euclidean",
    *,
    st_version: str | StSemantics | None = None,
) -> torch.Tensor:
    """Mean over anchors of ``max(d(a, hardest positive) - d(a, hardest negative) + margin, 0)``.

    Args:
        embeddings: [N, D] floating tensor.
        labels: [N] integer class ids (any shape with N elements).
        margin: the triplet margin.
        distance: "euclidean", "squared_euclidean", "cosine", one of sentence-transformers'
            ``BatchHardTripletLossDistanceFunction`` functions (run by the fused kernel), or any
            callable mapping [N, D] to an [N, N] distance matrix (run by the reference path).
        st_version: the sentence-transformers release whose cosine distance to follow ("6.2",
            "6.3"; None, the default: the installed one, see :mod:`embedplug.st_version`).

    Returns:
        A scalar tensor, equal to sentence-transformers' ``BatchHardTripletLoss`` (anchors with
        no positive use 0; anchors with no negative use ST's row-maximum rule).
    """
    caller = "batch_hard_triplet_loss"
    check_embeddings(embeddings, caller)
    labels = check_labels(labels, embeddings, caller)
    margin = check_finite_number(margin, "margin", caller)
    check_distance(distance, "distance", caller)
    name, matrix = kernel_or_matrix(embeddings, distance, caller, st_version)
    if name is not None:
        distances, _ = batch_hard_mining(embeddings, labels, name)
    else:
        distances, _ = mine_from_distance_matrix(matrix, labels)
    return triplet_margin_mean(distances[:, 0], distances[:, 1] + distances[:, 2], margin)


def triplet_margin_mean(hardest_positive: torch.Tensor, hardest_negative: torch.Tensor, margin: float) -> torch.Tensor:
    """``mean(max(p - n + margin, 0))`` with ST's masking: NaN entries keep their gradient path."""
    triplet = hardest_positive - hardest_negative + margin
    return torch.where(triplet < 0, torch.zeros_like(triplet), triplet).mean()
