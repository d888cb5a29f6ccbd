"""Label-aware contrastive losses on raw embeddings: SupCon (Khosla et al. 2020), multi-similarity
(Wang et al. 2019) and circle (Sun et al. 2020), equal to pytorch-metric-learning 2.9's.

Each is a preset pair rule (:mod:`embedplug.pair_rules.presets`) run by the fused pair-rule op
(:func:`embedplug.functional.pair_rule_loss`, O(N) memory), whose reducers are PML's:
``AvgNonZeroReducer`` (SupCon, circle) over the anchors whose loss is > 0 in exact arithmetic,
``MeanReducer`` (multi-similarity), and ``GenericPairLoss``'s 0 for batches with too few pairs
(``sum(embeddings * 0)``, as PML's). Hyper-parameters are checked when the rule is built.
"""

from __future__ import annotations

import torch

from embedplug._validation import check_embeddings, check_labels, warns_non_finite_input
from embedplug.functional.pair_rule import pair_rule_loss
from embedplug.pair_rules import presets


@warns_non_finite_input
def supervised_contrastive_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Supervised contrastive loss (SupCon) on cosine similarities of the normalised embeddings.

    Args:
        embeddings: [N, D] floating tensor (float16/bfloat16 are computed in float32).
        labels: [N] (or [N, 1]) class ids.
        temperature: the softmax temperature T.

    Returns:
        A scalar equal to ``pytorch_metric_learning.losses.SupConLoss(temperature)(embeddings, labels)``:
        per anchor with positives, ``-mean_p log softmax_{j != i}(s_ij / T)[p]``, averaged over the
        anchors whose loss is > 0; 0 for a batch without positive or without negative pairs.
    """
    caller = "supervised_contrastive_loss"
    check_embeddings(embeddings, caller)
    labels = check_labels(labels, embeddings, caller)
    return pair_rule_loss(embeddings, labels, presets.supcon(temperature))


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
        labels: [N] (or [N, 1]) class ids.
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
    return pair_rule_loss(embeddings, labels, presets.multi_similarity(alpha, beta, base, mining_epsilon))


@warns_non_finite_input
def circle_loss(embeddings: torch.Tensor, labels: torch.Tensor, m: float = 0.4, gamma: float = 80.0) -> torch.Tensor:
    """Circle loss on cosine similarities of the normalised embeddings.

    Args:
        embeddings: [N, D] floating tensor.
        labels: [N] (or [N, 1]) class ids.
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
    return pair_rule_loss(embeddings, labels, presets.circle(m, gamma))
