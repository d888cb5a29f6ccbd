"""pytorch-metric-learning 2.9's pair losses as :class:`~embedplug.pair_rules.PairRule` s.

Each function takes the PML loss's hyper-parameters (same names, order and defaults) and returns
the rule whose loss equals that PML loss with its default distance and reducer, in value and
gradient. The formula each one states is PML's.
"""

from __future__ import annotations

import dataclasses
import math

from embedplug._validation import check_finite_number, check_positive_number
from embedplug.pair_rules.parts import Affine, Combine, MiningFilter, Reducer, SelfPacedWeight, Side, VersusLse
from embedplug.pair_rules.rule import PairRule


def supcon(temperature: float = 0.1) -> PairRule:
    """``SupConLoss(temperature)``: per anchor with positives, ``mean_p [LSE_{j != i}(s_ij / T) - s_ip / T]``
    on cosine similarities, averaged over the anchors whose loss is > 0; 0 without positive or
    negative pairs."""
    temperature = check_positive_number(temperature, "temperature", "pair_rules.presets.supcon")
    side = Side("cosine", affine=Affine(temperature=temperature))
    return PairRule(
        positives=dataclasses.replace(side, term=VersusLse("positives_and_negatives"), reduction="mean"),
        negatives=side,
        combine=Combine("positives"),
        reducer=Reducer("avg_non_zero"),
        zero_without_both_pair_kinds=True,
    )


def multi_similarity(
    alpha: float = 2.0, beta: float = 50.0, base: float = 0.5, mining_epsilon: float | None = 0.1
) -> PairRule:
    """``MultiSimilarityLoss(alpha, beta, base)``, on ``MultiSimilarityMiner(mining_epsilon)``'s pairs
    (all pairs with ``mining_epsilon=None``): per anchor ``(1/alpha) log(1 + sum_p e^{alpha (base - s_p)})
    + (1/beta) log(1 + sum_n e^{beta (s_n - base)})``, the mean over all anchors."""
    caller = "pair_rules.presets.multi_similarity"
    alpha = check_positive_number(alpha, "alpha", caller)
    beta = check_positive_number(beta, "beta", caller)
    base = check_finite_number(base, "base", caller)
    mined = (
        None if mining_epsilon is None else MiningFilter(check_finite_number(mining_epsilon, "mining_epsilon", caller))
    )
    return PairRule(
        # alpha * (base - s) as -alpha * (s - base): the same float (negation is exact).
        positives=Side(
            "cosine", affine=Affine(-alpha, base), filter=mined, reduction="lse_add_one", output_scale=1.0 / alpha
        ),
        negatives=Side(
            "cosine", affine=Affine(beta, base), filter=mined, reduction="lse_add_one", output_scale=1.0 / beta
        ),
        combine=Combine("sum"),
        reducer=Reducer("mean"),
    )


def circle(m: float = 0.4, gamma: float = 80.0) -> PairRule:
    """``CircleLoss(m, gamma)``: per anchor with positives and negatives
    ``softplus(LSE_p(-gamma [1 + m - s_p]_+ (s_p - (1 - m))) + LSE_n(gamma [s_n + m]_+ (s_n - m)))``,
    the weights held constant, averaged over the anchors whose loss is > 0."""
    caller = "pair_rules.presets.circle"
    m = check_finite_number(m, "m", caller)
    gamma = check_positive_number(gamma, "gamma", caller)
    return PairRule(
        positives=Side("cosine", weight=SelfPacedWeight(1 + m, increasing=False), affine=Affine(-gamma, 1 - m)),
        negatives=Side("cosine", weight=SelfPacedWeight(-m, increasing=True), affine=Affine(gamma, m)),
        combine=Combine("softplus_of_sum", zero_unless_both_sides=True),
        reducer=Reducer("avg_non_zero"),
    )


def contrastive(pos_margin: float = 0.0, neg_margin: float = 1.0) -> PairRule:
    """``ContrastiveLoss(pos_margin, neg_margin)`` on euclidean distances of normalised embeddings:
    the mean of the positive pairs' ``[d - pos_margin]_+`` that are > 0, plus the mean of the negative
    pairs' ``[neg_margin - d]_+`` that are > 0."""
    caller = "pair_rules.presets.contrastive"
    pos_margin = check_finite_number(pos_margin, "pos_margin", caller)
    neg_margin = check_finite_number(neg_margin, "neg_margin", caller)
    return PairRule(
        positives=Side("euclidean", affine=Affine(1.0, pos_margin), term="hinge", reduction="pairs"),
        # neg_margin - d as -(d - neg_margin): the same float.
        negatives=Side("euclidean", affine=Affine(-1.0, neg_margin), term="hinge", reduction="pairs"),
        reducer=Reducer("avg_non_zero", over="pairs_of_each_side"),
    )


def ntxent(temperature: float = 0.07) -> PairRule:
    """``NTXentLoss(temperature)`` with labels: per positive pair ``-log(softmax + tiny)`` of
    ``s_ip / T`` among the pair and the anchor's negatives, the mean over positive pairs; 0 without
    positive or negative pairs."""
    temperature = check_positive_number(temperature, "temperature", "pair_rules.presets.ntxent")
    side = Side("cosine", affine=Affine(temperature=temperature))
    return PairRule(
        positives=dataclasses.replace(
            side, term=VersusLse("pair_and_negatives", outer="tiny_floor"), reduction="pairs"
        ),
        negatives=side,
        reducer=Reducer("mean", over="positive_pairs"),
        zero_without_both_pair_kinds=True,
    )


def generalized_lifted_structure(neg_margin: float = 1.0, pos_margin: float = 0.0) -> PairRule:
    """``GeneralizedLiftedStructureLoss(neg_margin, pos_margin)`` on euclidean distances of normalised
    embeddings: per anchor ``[LSE_p(d_p - pos_margin) + LSE_n(neg_margin - d_n)]_+`` (an empty side's
    LSE is 0), the mean over all anchors."""
    caller = "pair_rules.presets.generalized_lifted_structure"
    neg_margin = check_finite_number(neg_margin, "neg_margin", caller)
    pos_margin = check_finite_number(pos_margin, "pos_margin", caller)
    return PairRule(
        positives=Side("euclidean", affine=Affine(1.0, pos_margin)),
        negatives=Side("euclidean", affine=Affine(-1.0, neg_margin)),
        combine=Combine("hinge_of_sum"),
        reducer=Reducer("mean"),
    )


def tuplet_margin(margin: float = 5.73, scale: float = 64.0) -> PairRule:
    """``TupletMarginLoss(margin, scale)``, ``margin`` in degrees: per positive pair
    ``log(1 + sum_n e^{scale (s_n - cos(acos(s_p) - margin))})`` over the anchor's negatives, the mean
    over positive pairs; 0 without positive or negative pairs. (PML 2.9 and the paper subtract the
    margin from the positive's angle.)"""
    caller = "pair_rules.presets.tuplet_margin"
    margin = check_finite_number(margin, "margin", caller)
    scale = check_positive_number(scale, "scale", caller)
    return PairRule(
        positives=Side(
            "cosine",
            angle_offset=-math.radians(margin),
            affine=Affine(scale),
            term=VersusLse("pair_and_negatives"),
            reduction="pairs",
        ),
        negatives=Side("cosine", affine=Affine(scale)),
        reducer=Reducer("mean", over="positive_pairs"),
        zero_without_both_pair_kinds=True,
    )
