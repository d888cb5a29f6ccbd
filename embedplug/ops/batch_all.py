"""``embedplug::batch_all_triplet_loss_forward``: per-anchor batch-all triplet sums fused with the distances."""

from __future__ import annotations

import torch

from embedplug.ops import _triplet_sums, layer
from embedplug.ops.spec import Distance, Embeddings, Labels, OpSpec, Real
from embedplug.reference import batch_all as reference
from embedplug.reference.batch_all import (  # noqa: F401  (the custom-distance path)
    POSITIVE_TRIPLET_THRESHOLD,
    batch_all_from_distance_matrix,
)


def _fake(embeddings, labels, distance, margin, compute_grad):
    n = embeddings.shape[0]
    unit_grad = embeddings.new_empty(embeddings.shape if compute_grad else (0,))
    return embeddings.new_empty((n,)), labels.new_empty((n,)), unit_grad


def reduce_batch_all_sums(loss_sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """BatchAllTripletLoss: the sum of the triplet losses over (the number above 1e-16) + 1e-16."""
    return loss_sums.sum() / (counts.sum().to(loss_sums.dtype) + POSITIVE_TRIPLET_THRESHOLD)


def reduce_batch_all(inputs: tuple, outputs: tuple) -> torch.Tensor:
    """:func:`reduce_batch_all_sums` of the op's outputs."""
    return reduce_batch_all_sums(*outputs)


BATCH_ALL = layer.declare(OpSpec(
    name="batch_all_triplet_loss_forward",
    args=(Embeddings("embeddings"), Labels(), Distance("distance"), Real("margin")),
    reference=reference.batch_all_triplet_loss_forward,
    fake=_fake,
    outputs=2,
    autograd=_triplet_sums.autograd("_batch_all_triplet_loss_backward"),
    compute_grad_at=4,
    reduce=reduce_batch_all,
    samples=_triplet_sums.samples,
))


def batch_all_triplet_loss_forward(
    embeddings: torch.Tensor, labels: torch.Tensor, distance: str = "euclidean", margin: float = 5.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor batch-all triplet sums, fused with the pairwise distances.

    Args:
        embeddings: [N, D] floating tensor (float16/bfloat16 are computed in float32).
        labels: [N] integer class ids on the same device.
        distance: "euclidean", "squared_euclidean" or "cosine".
        margin: the triplet margin (finite).

    Returns:
        loss_sums: [N] (float32/float64), differentiable — per anchor the sum over its valid
            triplets of ``max((d_ap - d_an) + margin, 0)``.
        counts: [N] int64 — per anchor the number of those triplets above 1e-16.
    """
    return layer.call(BATCH_ALL, embeddings, labels, distance, margin)
