"""``embedplug::semi_hard_triplet_loss_forward``: per-anchor semi-hard triplet sums fused with the distances."""

from __future__ import annotations

import torch

from embedplug.ops import _triplet_sums, layer
from embedplug.ops.spec import Distance, Embeddings, Labels, OpSpec, Real
from embedplug.reference import semi_hard as reference
from embedplug.reference.semi_hard import _masked_maximum, semi_hard_from_distance_matrix  # noqa: F401


def _fake(embeddings, labels, distance, margin, compute_grad):
    unit_grad = embeddings.new_empty(embeddings.shape if compute_grad else (0,))
    return embeddings.new_empty((embeddings.shape[0],)), unit_grad


def positive_pair_count(labels: torch.Tensor) -> torch.Tensor:
    """Number of ordered pairs (a, p), a != p, with equal labels: sum over samples of (class size - 1).

    O(N log N) with static shapes (a sort and two searches, no ``unique``), so it compiles
    without graph breaks.
    """
    ordered = labels.sort().values
    class_size = torch.searchsorted(ordered, labels, right=True) - torch.searchsorted(ordered, labels)
    return (class_size - 1).sum()


def reduce_semi_hard_sums(loss_sums: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BatchSemiHardTripletLoss: the sum over positive pairs over their number (clamped at 1e-16)."""
    return loss_sums.sum() / positive_pair_count(labels).to(loss_sums.dtype).clamp(min=1e-16)


def reduce_semi_hard(inputs: tuple, outputs: tuple) -> torch.Tensor:
    """:func:`reduce_semi_hard_sums` of the op's outputs."""
    return reduce_semi_hard_sums(outputs[0], inputs[1])


SEMI_HARD = layer.declare(OpSpec(
    name="semi_hard_triplet_loss_forward",
    args=(Embeddings("embeddings"), Labels(), Distance("distance"), Real("margin")),
    reference=reference.semi_hard_triplet_loss_forward,
    fake=_fake,
    outputs=1,
    autograd=_triplet_sums.autograd("_semi_hard_triplet_loss_backward"),
    compute_grad_at=4,
    reduce=reduce_semi_hard,
    samples=_triplet_sums.samples,
))


def semi_hard_triplet_loss_forward(
    embeddings: torch.Tensor, labels: torch.Tensor, distance: str = "euclidean", margin: float = 5.0
) -> torch.Tensor:
    """Per-anchor semi-hard triplet sums, fused with the pairwise distances.

    Args:
        embeddings: [N, D] floating tensor (float16/bfloat16 are computed in float32).
        labels: [N] integer class ids on the same device.
        distance: "euclidean", "squared_euclidean" or "cosine".
        margin: the triplet margin (finite).

    Returns:
        loss_sums: [N] (float32/float64), differentiable — per anchor the sum over its positives
        of ``max((d_ap - d_semi_hard_negative) + margin, 0)``.
    """
    (sums,) = layer.call(SEMI_HARD, embeddings, labels, distance, margin)
    return sums
