"""What the batch-all and semi-hard ops share: per-anchor triplet sums whose kernel may compute the
gradient in the forward pass (``compute_grad``), and a backward op that reuses or recomputes it."""

from __future__ import annotations

import torch

from embedplug.ops.samples import labelled_batches
from embedplug.ops.spec import Autograd, Sample


def backward_fake(grad_sums, embeddings, labels, unit_grad, distance, margin):
    return torch.empty_like(embeddings)


def autograd(backward_op: str) -> Autograd:
    """Forward ``(embeddings, labels, distance, margin, compute_grad) -> (sums, ..., unit_grad)``;
    backward op ``(grad_sums, embeddings, labels, unit_grad, distance, margin)``."""

    def setup_context(ctx, inputs, output):
        embeddings, labels, distance, margin, _compute_grad = inputs
        unit_grad = output[-1]
        ctx.save_for_backward(embeddings, labels, unit_grad)
        ctx.distance, ctx.margin = distance, margin
        ctx.mark_non_differentiable(*output[1:])

    def backward(ctx, grad_sums, *_unused):
        embeddings, labels, unit_grad = ctx.saved_tensors
        grad = getattr(torch.ops.embedplug, backward_op)(grad_sums, embeddings, labels, unit_grad, ctx.distance, ctx.margin)
        return grad, None, None, None, None

    return Autograd(setup_context, backward, backward_op, backward_fake)


def samples(dtype):
    from embedplug.ops.batch_hard import distance_tolerances

    """Every label structure, each distance, the default margin and a small one. Their selections
    ("strictly above", counts above 1e-16) flip on a rounding, so float32 is compared with the
    float32 reference only."""
    for regime, x, y in labelled_batches(dtype):
        for distance in ("euclidean", "squared_euclidean", "cosine"):
            for margin in (5.0, 0.1):
                yield Sample((x, y, distance, margin), regime, float32_matches_float64=False,
                             **distance_tolerances(x, distance))
