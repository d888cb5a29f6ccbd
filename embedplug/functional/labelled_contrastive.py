"""Label-aware contrastive losses on raw embeddings: SupCon (Khosla et al. 2020), multi-similarity
(Wang et al. 2019) and circle (Sun et al. 2020), equal to pytorch-metric-learning 2.9's.

The per-anchor losses come from the fused ops (O(N) memory); here only PML's reducers and its
degenerate-batch rules are applied:
  * ``GenericPairLoss`` returns 0 when every pair list has at most one entry (a batch of one, or a
    miner that kept at most one positive and one negative pair); ``SupConLoss`` also when the batch
    has no positive pair or no negative pair at all. That 0 is ``sum(embeddings * 0)``, as PML's.
  * ``AvgNonZeroReducer`` (SupCon, circle): the mean over the anchors whose loss is > 0; NaN losses
    are kept in the mean so that bad input gives NaN rather than a silently smaller batch.
  * ``MeanReducer`` (multi-similarity): the mean over every anchor.
"""

from __future__ import annotations

import torch

from embedplug._validation import check_embeddings, check_labels, warns_non_finite_input
from embedplug.ops import labelled_contrastive as ops


def _check_positive(value: float, name: str, caller: str) -> float:
    value = float(value)
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{caller}: {name} must be a positive finite number, got {value}")
    return value


def _check_finite(value: float, name: str, caller: str) -> float:
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{caller}: {name} must be a finite number, got {value}")
    return value


def _zero_loss(embeddings: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """PML's ``zero_loss``: ``sum(embeddings * 0)`` (0 with a zero gradient; NaN for non-finite input)."""
    return (embeddings * 0).sum().to(dtype)


def _avg_non_zero(losses: torch.Tensor) -> torch.Tensor:
    counted = (losses > 0) | losses.isnan()
    total = torch.where(counted, losses, torch.zeros_like(losses)).sum()
    return total / counted.sum().clamp(min=1).to(losses.dtype)


def _few_pairs(positive_pairs: torch.Tensor, negative_pairs: torch.Tensor) -> torch.Tensor:
    """GenericPairLoss's early exit: every pair list (anchor-positive, anchor-negative) has <= 1 entry."""
    return (positive_pairs.sum() <= 1) & (negative_pairs.sum() <= 1)


@warns_non_finite_input
def supervised_contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Supervised contrastive loss (SupCon) on cosine similarities of the normalised embeddings.

    Args:
        embeddings: [N, D] floating tensor (float16/bfloat16 are computed in float32).
        labels: [N] integer class ids (any shape with N elements).
        temperature: the softmax temperature T.

    Returns:
        A scalar equal to ``pytorch_metric_learning.losses.SupConLoss(temperature)(embeddings, labels)``:
        per anchor with positives, ``-mean_p log softmax_{j != i}(s_ij / T)[p]``, averaged over the
        anchors whose loss is > 0; 0 for a batch without positive or without negative pairs.
    """
    caller = "supervised_contrastive_loss"
    check_embeddings(embeddings, caller)
    labels = check_labels(labels, embeddings, caller)
    temperature = _check_positive(temperature, "temperature", caller)
    losses, positive, negative = ops.supcon_loss_forward(embeddings, labels, temperature)
    degenerate = (positive.sum() == 0) | (negative.sum() == 0)
    return torch.where(degenerate, _zero_loss(embeddings, losses.dtype), _avg_non_zero(losses))


@warns_non_finite_input
def multi_similarity_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    mining_epsilon: float | None = 0.1,
) -> torch.Tensor:
    """Multi-similarity loss on cosine similarities, optionally on MultiSimilarityMiner's pairs.

    Args:
        embeddings: [N, D] floating tensor.
        labels: [N] integer class ids (any shape with N elements).
        alpha, beta, base: PML's ``MultiSimilarityLoss`` parameters (positive scale, negative scale,
            similarity offset).
        mining_epsilon: ``None`` uses every pair; a number uses the pairs
            ``MultiSimilarityMiner(epsilon=mining_epsilon)`` picks (positives less similar than the
            hardest negative + epsilon, negatives more similar than the hardest positive - epsilon).

    Returns:
        A scalar equal to ``MultiSimilarityLoss(alpha, beta, base)(embeddings, labels)`` (with
        ``mining_epsilon=None``) or ``MultiSimilarityLoss(alpha, beta, base)(embeddings, labels,
        MultiSimilarityMiner(mining_epsilon)(embeddings, labels))``: the mean over all anchors of
        ``(1/alpha) log(1 + sum_p e^{alpha (base - s_p)}) + (1/beta) log(1 + sum_n e^{beta (s_n - base)})``.
    """
    caller = "multi_similarity_loss"
    check_embeddings(embeddings, caller)
    labels = check_labels(labels, embeddings, caller)
    alpha = _check_positive(alpha, "alpha", caller)
    beta = _check_positive(beta, "beta", caller)
    base = _check_finite(base, "base", caller)
    if mining_epsilon is not None:
        mining_epsilon = _check_finite(mining_epsilon, "mining_epsilon", caller)
    losses, positive, negative = ops.multi_similarity_loss_forward(embeddings, labels, alpha, beta, base, mining_epsilon)
    return torch.where(_few_pairs(positive, negative), _zero_loss(embeddings, losses.dtype), losses.mean())


@warns_non_finite_input
def circle_loss(embeddings: torch.Tensor, labels: torch.Tensor, m: float = 0.4, gamma: float = 80.0) -> torch.Tensor:
    """Circle loss on cosine similarities of the normalised embeddings.

    Args:
        embeddings: [N, D] floating tensor.
        labels: [N] integer class ids (any shape with N elements).
        m: the relaxation margin (optima 1 - m for positives, m for negatives).
        gamma: the scale.

    Returns:
        A scalar equal to ``pytorch_metric_learning.losses.CircleLoss(m, gamma)(embeddings, labels)``:
        per anchor with positives and negatives ``softplus(lse_p + lse_n)``, averaged over the
        anchors whose loss is > 0.
    """
    caller = "circle_loss"
    check_embeddings(embeddings, caller)
    labels = check_labels(labels, embeddings, caller)
    m = _check_finite(m, "m", caller)
    gamma = _check_positive(gamma, "gamma", caller)
    losses, positive, negative = ops.circle_loss_forward(embeddings, labels, m, gamma)
    return torch.where(_few_pairs(positive, negative), _zero_loss(embeddings, losses.dtype), _avg_non_zero(losses))
