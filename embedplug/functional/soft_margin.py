"""Batch-hard triplet loss with a soft margin (Hermans et al. 2017) on raw embeddings."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from embedplug._validation import check_distance, check_embeddings, check_labels, warns_non_finite_input
from embedplug.functional._pairwise_path import kernel_or_matrix
from embedplug.ops import batch_hard_mining
from embedplug.ops.batch_hard import mine_from_distance_matrix
from embedplug.st_version import StSemantics


@warns_non_finite_input
def batch_hard_soft_margin_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    distance: str | Callable[[torch.Tensor], torch.Tensor] = "euclidean",
    *,
    st_version: str | StSemantics | None = None,
) -> torch.Tensor:
    """Mean over anchors of ``softplus(d(a, hardest positive) - d(a, hardest negative))``.

    Same mining as :func:`embedplug.functional.batch_hard_triplet_loss` (the fused
    ``batch_hard_mining`` op); only the final formula differs.

    Args:
        embeddings: [N, D] floating tensor.
        labels: [N] integer class ids (any shape with N elements).
        distance: a kernel distance name, one of sentence-transformers'
            ``BatchHardTripletLossDistanceFunction`` functions, or any [N, D] -> [N, N] callable.
        st_version: the sentence-transformers release whose cosine distance to follow ("6.2",
            "6.3"; None, the default: the installed one, see :mod:`embedplug.st_version`).

    Returns:
        A scalar tensor equal to sentence-transformers' ``BatchHardSoftMarginTripletLoss``.
    """
    caller = "batch_hard_soft_margin_triplet_loss"
    check_embeddings(embeddings, caller)
    labels = check_labels(labels, embeddings, caller)
    check_distance(distance, "distance", caller)
    name, matrix = kernel_or_matrix(embeddings, distance, caller, st_version)
    if name is not None:
        distances, _ = batch_hard_mining(embeddings, labels, name)
    else:
        distances, _ = mine_from_distance_matrix(matrix, labels)
    return F.softplus(distances[:, 0] - (distances[:, 1] + distances[:, 2])).mean()
