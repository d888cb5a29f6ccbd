"""MegaBatchMarginLoss on raw embeddings: each anchor's hardest in-batch negative, mined by the fused kernel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from embedplug._validation import check_embeddings, warns_non_finite_input
from embedplug.ops.hardest_negative import hardest_off_diagonal_similarity


@warns_non_finite_input
def mega_batch_margin_loss(
    anchors: torch.Tensor, positives: torch.Tensor, positive_margin: float = 0.8, negative_margin: float = 0.3
) -> torch.Tensor:
    """sentence-transformers' MegaBatchMarginLoss from the (anchor, positive) embeddings.

    ``sum_i relu(positive_margin - cos(a_i, p_i)) + relu(max_{j != i} cos(a_i, p_j) - negative_margin)``
    divided by N. The hardest negative j of each anchor comes from
    ``embedplug::hardest_off_diagonal_similarity`` (a running row maximum over GEMM tiles, torch.max's
    tie order: the first maximum, a NaN wins); its similarity is then recomputed from the two rows, so
    the gradient reaches exactly the pairs sentence-transformers' ``torch.max`` picks, in O(N D) memory.
    An anchor without another positive (N = 1) has no negative term, as in sentence-transformers.

    Args:
        anchors, positives: [N, D] embeddings (not normalised; cosine similarity is used).

    Returns:
        The scalar loss (differentiable w.r.t. both inputs).
    """
    check_embeddings(anchors, "mega_batch_margin_loss")
    check_embeddings(positives, "mega_batch_margin_loss")
    if anchors.shape != positives.shape:
        raise ValueError(
            f"mega_batch_margin_loss: anchors and positives must have the same shape [N, D], got "
            f"{tuple(anchors.shape)} and {tuple(positives.shape)}"
        )
    # sentence-transformers' cos_sim: sub-float32 inputs in float32, then F.normalize(p=2) on both sides.
    if torch.finfo(anchors.dtype).bits < 32:
        anchors = anchors.float()
    if torch.finfo(positives.dtype).bits < 32:
        positives = positives.float()
    anchors = F.normalize(anchors, p=2, dim=1)
    positives = F.normalize(positives, p=2, dim=1)
    positive_scores = (anchors * positives).sum(1)
    _, hardest_index = hardest_off_diagonal_similarity(anchors, positives)
    has_negative = hardest_index >= 0
    negative_scores = (anchors * positives[hardest_index.clamp_min(0)]).sum(1)
    negative_scores = torch.where(has_negative, negative_scores, torch.full_like(negative_scores, -torch.inf))
    per_anchor = F.relu(positive_margin - positive_scores) + F.relu(negative_scores - negative_margin)
    return per_anchor.sum() / anchors.shape[0]
