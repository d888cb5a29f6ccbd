"""``embedplug::supcon_loss_forward``, ``multi_similarity_loss_forward``, ``circle_loss_forward``.

Each op returns pytorch-metric-learning's per-anchor losses before its reducer and the pairs each
anchor used; the reducers (PML's ``AvgNonZeroReducer`` and ``MeanReducer`` with its degenerate-batch
rules) are declared here with the ops, so the functional forms and the conformance table apply the
same ones.
"""

from __future__ import annotations

import torch

from embedplug.ops import layer
from embedplug.ops.samples import labelled_batches
from embedplug.ops.spec import Autograd, Embeddings, Labels, OpSpec, Real, Sample
from embedplug.reference import labelled_contrastive as reference


def _forward_fake(embeddings, labels, *rest):
    compute_grad = rest[-1]
    n = embeddings.shape[0]
    unit_grad = embeddings.new_empty(embeddings.shape if compute_grad else (0,))
    return embeddings.new_empty((n,)), labels.new_empty((n,)), labels.new_empty((n,)), unit_grad


def _backward_fake(grad_losses, embeddings, *rest):
    return torch.empty_like(embeddings)


def _autograd(backward_op: str, num_options: int) -> Autograd:
    """Forward ``(embeddings, labels, *options, compute_grad)``; backward op
    ``(grad_losses, embeddings, labels, losses, unit_grad, *options)``."""

    def setup_context(ctx, inputs, output):
        embeddings, labels = inputs[0], inputs[1]
        losses, positive_pairs, negative_pairs, unit_grad = output
        ctx.save_for_backward(embeddings, labels, losses, unit_grad)
        ctx.options = tuple(inputs[2 : 2 + num_options])
        ctx.mark_non_differentiable(positive_pairs, negative_pairs, unit_grad)

    def backward(ctx, grad_losses, _grad_positive, _grad_negative, _grad_unit):
        embeddings, labels, losses, unit_grad = ctx.saved_tensors
        grad = getattr(torch.ops.embedplug, backward_op)(grad_losses, embeddings, labels, losses, unit_grad, *ctx.options)
        return (grad, None, *([None] * num_options), None)

    return Autograd(setup_context, backward, backward_op, _backward_fake)


# ---------------------------------------------------------------------------------------------
# PML's reducers. AvgNonZeroReducer averages the losses that are > 0; whether a loss is > 0 is
# settled by the pair counts in exact arithmetic, never by testing a float32 value that rounded a
# tiny positive loss to 0 (that rescales the whole batch's gradient late in training).


def zero_loss(embeddings: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """PML's ``zero_loss``: ``sum(embeddings * 0)`` (0 with a zero gradient; NaN for non-finite input)."""
    return (embeddings * 0).sum().to(dtype)


def avg_non_zero(losses: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Mean of ``losses`` [N] over the ``counted`` anchors [N] (bool) and the NaN ones."""
    counted = counted | losses.isnan()
    total = torch.where(counted, losses, torch.zeros_like(losses)).sum()
    return total / counted.sum().clamp(min=1).to(losses.dtype)


def few_pairs(positive_pairs: torch.Tensor, negative_pairs: torch.Tensor) -> torch.Tensor:
    """GenericPairLoss's early exit: every pair list (anchor-positive, anchor-negative) has <= 1 entry."""
    return (positive_pairs.sum() <= 1) & (negative_pairs.sum() <= 1)


def reduce_supcon(inputs: tuple, outputs: tuple) -> torch.Tensor:
    """SupConLoss: AvgNonZero over anchors with a positive and a second softmax column (-log softmax
    > 0 exactly there); 0 for a batch without positive or without negative pairs."""
    embeddings = inputs[0]
    losses, positive, negative = outputs
    counted = (positive >= 1) & (positive + negative >= 2)
    degenerate = (positive.sum() == 0) | (negative.sum() == 0)
    return torch.where(degenerate, zero_loss(embeddings, losses.dtype), avg_non_zero(losses, counted))


def reduce_multi_similarity(inputs: tuple, outputs: tuple) -> torch.Tensor:
    """MultiSimilarityLoss: the mean over every anchor (MeanReducer), 0 when GenericPairLoss exits early."""
    losses, positive, negative = outputs
    return torch.where(few_pairs(positive, negative), zero_loss(inputs[0], losses.dtype), losses.mean())


def reduce_circle(inputs: tuple, outputs: tuple) -> torch.Tensor:
    """CircleLoss: AvgNonZero over anchors with a positive and a negative (softplus > 0 there)."""
    losses, positive, negative = outputs
    counted = (positive >= 1) & (negative >= 1)
    return torch.where(few_pairs(positive, negative), zero_loss(inputs[0], losses.dtype), avg_non_zero(losses, counted))


def _samples(options_by_regime):
    def samples(dtype):
        for regime, x, y in labelled_batches(dtype):
            for options in options_by_regime(regime):
                yield Sample((x, y, *options), regime)

    return samples


SUPCON = layer.declare(OpSpec(
    name="supcon_loss_forward",
    args=(Embeddings("embeddings"), Labels(), Real("temperature", positive=True)),
    reference=reference.supcon_loss_forward,
    fake=_forward_fake,
    outputs=3,
    autograd=_autograd("_supcon_loss_backward", 1),
    compute_grad_at=3,
    reduce=reduce_supcon,
    samples=_samples(lambda regime: [(0.1,), (0.02,)] if regime != "ragged last tile" else [(0.05,)]),
))

MULTI_SIMILARITY = layer.declare(OpSpec(
    name="multi_similarity_loss_forward",
    args=(
        Embeddings("embeddings"), Labels(), Real("alpha", positive=True), Real("beta", positive=True),
        Real("base"), Real("mining_epsilon", optional=True),
    ),
    reference=reference.multi_similarity_loss_forward,
    fake=_forward_fake,
    outputs=3,
    autograd=_autograd("_multi_similarity_loss_backward", 4),
    compute_grad_at=6,
    reduce=reduce_multi_similarity,
    samples=_samples(lambda regime: [(2.0, 50.0, 0.5, None), (2.0, 50.0, 0.5, 0.1), (10.0, 200.0, 0.5, 0.1)]),
))

CIRCLE = layer.declare(OpSpec(
    name="circle_loss_forward",
    args=(Embeddings("embeddings"), Labels(), Real("m"), Real("gamma", positive=True)),
    reference=reference.circle_loss_forward,
    fake=_forward_fake,
    outputs=3,
    autograd=_autograd("_circle_loss_backward", 2),
    compute_grad_at=4,
    reduce=reduce_circle,
    samples=_samples(lambda regime: [(0.4, 80.0), (0.25, 256.0)]),
    gradcheck=False,  # PML detaches the relu factors of circle's logits
))


Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def supcon_loss_forward(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> Outputs:
    """Per-anchor supervised contrastive loss, fused with the similarity GEMMs.

    Args:
        embeddings: [N, D] floating tensor (float16/bfloat16 are computed in float32).
        labels: [N] integer class ids on the same device.
        temperature: softmax temperature.

    Returns:
        losses: [N], differentiable — PML's ``SupConLoss`` per-anchor loss before its reducer.
        positive_pairs, negative_pairs: [N] int64 — the anchor's positives and negatives.
    """
    return layer.call(SUPCON, embeddings, labels, temperature)


def multi_similarity_loss_forward(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    beta: float,
    base: float,
    mining_epsilon: float | None,
) -> Outputs:
    """Per-anchor multi-similarity loss over all pairs, or over ``MultiSimilarityMiner(mining_epsilon)``'s.

    Shapes as :func:`supcon_loss_forward`; the pair counts are those after mining.
    """
    return layer.call(MULTI_SIMILARITY, embeddings, labels, alpha, beta, base, mining_epsilon)


def circle_loss_forward(embeddings: torch.Tensor, labels: torch.Tensor, m: float, gamma: float) -> Outputs:
    """Per-anchor circle loss, fused with the similarity GEMMs. Shapes as :func:`supcon_loss_forward`."""
    return layer.call(CIRCLE, embeddings, labels, m, gamma)
