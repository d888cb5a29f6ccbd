"""``embedplug::batch_hard_mining``: per-anchor batch-hard triplet mining fused with the distances."""

from __future__ import annotations

import torch

from embedplug.ops import layer
from embedplug.ops.samples import labelled_batches
from embedplug.ops.spec import Autograd, Distance, Embeddings, Labels, OpSpec, Sample
from embedplug.reference import batch_hard as reference
from embedplug.reference.batch_hard import mine_from_distance_matrix  # noqa: F401  (the custom-distance path)
from embedplug.reference.pairwise import paired_distances, pairwise_distances  # noqa: F401  (the distance matrices of the custom-distance path)


def _fake(embeddings, labels, distance):
    n = embeddings.shape[0]
    return embeddings.new_empty((n, 3)), labels.new_empty((n, 3))


def _backward_fake(grad_distances, embeddings, distances, indices, distance):
    return torch.empty_like(embeddings)


def _setup_context(ctx, inputs, output):
    embeddings, _labels, distance = inputs
    distances, indices = output
    ctx.save_for_backward(embeddings, distances, indices)
    ctx.distance = distance
    ctx.mark_non_differentiable(indices)


def _backward(ctx, grad_distances, _grad_indices):
    embeddings, distances, indices = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True: the kernel's scatter is not differentiable, so rebuild the (at most
        # 3N) mined distances in torch, O(N D), and let autograd differentiate them again.
        return _differentiable_backward(grad_distances, embeddings, indices, ctx.distance), None, None
    grad = torch.ops.embedplug._batch_hard_mining_backward(grad_distances, embeddings, distances, indices, ctx.distance)
    return grad, None, None


def _differentiable_backward(
    grad_distances: torch.Tensor, embeddings: torch.Tensor, indices: torch.Tensor, distance: str
) -> torch.Tensor:
    """d sum(grad_distances * distances) / d embeddings as a differentiable graph: [N, 3], [N, D], [N, 3] -> [N, D].

    The mined pairs' distances are recomputed with the reference's formula, so the second derivative
    is the reference's (the selection itself is piecewise constant).
    """
    used = indices >= 0
    rows = torch.arange(indices.shape[0], device=indices.device).unsqueeze(1).expand_as(indices)[used]
    with torch.enable_grad():
        source = embeddings if embeddings.requires_grad else embeddings.detach().requires_grad_()
        pair_distances = paired_distances(source[rows], source[indices[used]], distance)
        # As grad_outputs, grad_distances stays differentiable without being traversed: it may
        # itself depend on this op's output (softplus), which would recurse into this backward.
        (grad,) = torch.autograd.grad(
            pair_distances, source, grad_outputs=grad_distances[used].to(pair_distances.dtype),
            create_graph=True, allow_unused=True,
        )
    return torch.zeros_like(embeddings) if grad is None else grad


def reduce_batch_hard(inputs: tuple, outputs: tuple) -> torch.Tensor:
    """BatchHardTripletLoss with margin 5: mean over anchors of relu(d_ap - d_an + 5)."""
    distances, _ = outputs
    return torch.relu(distances[:, 0] - (distances[:, 1] + distances[:, 2]) + 5.0).mean()


def distance_tolerances(x: torch.Tensor, distance: str) -> dict:
    """How far two correct GEMM-based distances of ``x``'s rows may be apart: a Gram entry carries
    eps * |x|^2, and the euclidean square root turns that into sqrt(eps) * |x| near 0."""
    if distance == "cosine":
        return {}
    norm = float(x.double().norm(dim=1).max())
    if distance == "squared_euclidean":
        return {"float64_atol": max(1e-10, 1e-14 * norm**2), "float32_atol": max(2e-4, 1e-6 * norm**2)}
    return {"float64_atol": 1e-6 * max(1.0, norm), "float32_atol": max(2e-4, 2e-3 * norm)}


def _samples(dtype):
    for regime, x, y in labelled_batches(dtype):
        for distance in ("euclidean", "squared_euclidean", "cosine"):
            yield Sample((x, y, distance), regime, **distance_tolerances(x, distance))


BATCH_HARD = layer.declare(OpSpec(
    name="batch_hard_mining",
    args=(Embeddings("embeddings"), Labels(), Distance("distance")),
    reference=reference.batch_hard_mining,
    fake=_fake,
    outputs=2,
    autograd=Autograd(_setup_context, _backward, "_batch_hard_mining_backward", _backward_fake, double_backward="supported"),
    reduce=reduce_batch_hard,
    samples=_samples,
))


def batch_hard_mining(
    embeddings: torch.Tensor, labels: torch.Tensor, distance: str = "euclidean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor batch-hard triplet mining, fused with the pairwise distances.

    Args:
        embeddings: [N, D] floating tensor (float16/bfloat16 are computed in float32, as
            sentence-transformers' euclidean distance does).
        labels: [N] integer class ids on the same device.
        distance: "euclidean", "squared_euclidean" or "cosine".

    Returns:
        distances: [N, 3] (float32/float64) — hardest positive, hardest-negative candidate and
            the row-maximum offset sentence-transformers adds when the candidate is not a true
            negative; the batch-hard negative term is ``distances[:, 1] + distances[:, 2]``.
        indices: [N, 3] int64 — the column each distance came from, -1 for an unused slot.
    """
    return layer.call(BATCH_HARD, embeddings, labels, distance)
