"""The exact pure-torch interpreter of :class:`~embedplug.pair_rules.PairRule`: N x N matrices.

It is the oracle of the fused pair-rule kernel (``embedplug::pair_rule_forward``) in the tests and
its fallback where the extension has no kernel. It returns per-anchor sums of the rule's terms with
their counts (what the kernel returns, O(N)); :func:`embedplug.ops.pair_rule.reduce_pair_rule`
makes the batch loss.

Numerics follow pytorch-metric-learning where float32 parity depends on it: its distances
(``torch.cdist`` of normalised rows, normalise-then-matmul cosines), its masked log-sum-exp (masked
entries at the dtype's lowest value, empty rows 0), the order of each affine map, and per-pair
log-sum-exps taken from differences to the anchor's largest logit, never as the difference of two
large log-sum-exps (that would lose the small terms of well-separated classes).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from embedplug.pair_rules import PairRule, Side, VersusLse


class PairRuleTerms(NamedTuple):
    """What the interpreter returns for one batch of N anchors; S is 2 for
    ``reducer.over == "pairs_of_each_side"`` (positives, negatives), else 1.

    Attributes:
        loss_sums: [S, N] — per anchor the sum of its terms (``over="anchors"``: its loss).
        counted: [S, N] int64 — how many of those terms are > 0 in exact arithmetic (-1 where the
            rule does not make that known, i.e. its reducer is not ``avg_non_zero``).
        terms: [S, N] int64 — how many terms (1 per anchor, or the anchor's kept pairs).
        positive_pairs, negative_pairs: [N] int64 — the anchor's kept positive / negative pairs.
    """

    loss_sums: torch.Tensor
    counted: torch.Tensor
    terms: torch.Tensor
    positive_pairs: torch.Tensor
    negative_pairs: torch.Tensor


class _SideValues(NamedTuple):
    """One side after its reduction: [N] per anchor, or [N, N] per pair (zero off the kept pairs);
    ``positive`` is where the value is > 0 in exact arithmetic, or None when that is not known."""

    value: torch.Tensor
    positive: torch.Tensor | None


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive [N, N], negative [N, N]): same label but not the anchor itself; another label."""
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    positive = same & ~torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return positive, ~same


def measure_matrix(embeddings: torch.Tensor, measure: str, normalize: bool) -> torch.Tensor:
    """[N, D] -> [N, N] as pytorch-metric-learning's distances compute it (``CosineSimilarity``,
    ``DotProductSimilarity``, ``LpDistance(p=2, power=1 or 2)``)."""
    rows = F.normalize(embeddings, p=2, dim=1) if normalize else embeddings
    if measure in ("cosine", "dot"):
        return rows @ rows.t()
    distances = torch.cdist(rows, rows, p=2)
    return distances**2 if measure == "squared_euclidean" else distances


def _lowest(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).min


def masked_logsumexp(x: torch.Tensor, keep: torch.Tensor, add_one: bool) -> torch.Tensor:
    """PML's ``lmu.logsumexp`` along rows: [N, N] -> [N]; 0 for a row that keeps nothing."""
    x = x.masked_fill(~keep, _lowest(x))
    if add_one:
        x = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)
    return torch.logsumexp(x, dim=1).masked_fill(~keep.any(dim=1), 0)


def mining_filters(rule: PairRule, similarity: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor):
    """The (positive, negative) pairs the sides' :class:`~embedplug.pair_rules.MiningFilter` s keep.

    ``similarity`` is the raw measure both sides share (checked when the rule was built). For a
    distance the comparisons mirror (PML's miner with a non-inverted distance).
    """
    if rule.positives.filter is None and rule.negatives.filter is None:
        return positive, negative
    with torch.no_grad():
        inverted = rule.positives.measure in ("cosine", "dot")
        # Work on "closeness" so one comparison serves both: for a distance, larger d is farther.
        closeness = similarity.detach() if inverted else -similarity.detach()
        hardest_negative = closeness.masked_fill(~negative, float("-inf")).amax(dim=1, keepdim=True)
        hardest_positive = closeness.masked_fill(~positive, float("inf")).amin(dim=1, keepdim=True)
        kept_positive, kept_negative = positive, negative
        if rule.positives.filter is not None:
            epsilon = rule.positives.filter.epsilon
            # similarity: s - eps < max_n s; distance: d + eps > min_n d, i.e. -d - eps < max_n (-d).
            kept_positive = positive & (closeness - epsilon < hardest_negative)
        if rule.negatives.filter is not None:
            epsilon = rule.negatives.filter.epsilon
            kept_negative = negative & (closeness + epsilon > hardest_positive)
    return kept_positive, kept_negative


def side_logits(side: Side, measure: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """[N, N] logits ``x`` of the kept pairs (0 elsewhere, so nothing unused can turn a gradient
    into NaN: acos of a rounded 1.0000001, exp of a masked entry)."""
    s = torch.where(kept, measure, torch.zeros_like(measure))
    if side.angle_offset != 0:
        s = torch.cos(torch.acos(s) + side.angle_offset)
    affine = side.affine
    factor = affine.scale
    if side.weight is not None:
        raw = measure.detach()
        optimum = side.weight.optimum
        weight = torch.relu(raw - optimum) if side.weight.increasing else torch.relu(optimum - raw)
        # PML's CircleLoss order: (scale * w) * (s - shift).
        factor = affine.scale * torch.where(kept, weight, torch.zeros_like(weight))
    x = factor * (s - affine.shift)
    if affine.temperature != 1:
        x = x / affine.temperature
    return x


class _RowLse(NamedTuple):
    """Per anchor, a log-sum-exp split as ``max + log sum exp(x - max)`` (max detached; 0 for an
    anchor without kept pairs), so that per-pair differences never subtract two large numbers."""

    shift: torch.Tensor  # [N]
    log_sum: torch.Tensor  # [N]
    nonempty: torch.Tensor  # [N] bool


def row_lse(x: torch.Tensor, keep: torch.Tensor) -> _RowLse:
    nonempty = keep.any(dim=1)
    shift = x.detach().masked_fill(~keep, float("-inf")).amax(dim=1)
    shift = torch.where(nonempty, shift, torch.zeros_like(shift))
    log_sum = torch.logsumexp((x - shift.unsqueeze(1)).masked_fill(~keep, _lowest(x)), dim=1)
    return _RowLse(shift, log_sum, nonempty)


def _difference_to_reference(lse: _RowLse, x_pair: torch.Tensor, partner: bool):
    """[N, N] ``L - x_ij`` for each pair (L: anchor i's log-sum-exp, with ``partner`` also j's), and
    [N, N] whether L is over a non-empty set."""
    own = (lse.shift.unsqueeze(1) - x_pair) + lse.log_sum.unsqueeze(1)
    own_nonempty = lse.nonempty.unsqueeze(1).expand_as(x_pair)
    if not partner:
        return own, own_nonempty
    partners = (lse.shift.unsqueeze(0) - x_pair) + lse.log_sum.unsqueeze(0)
    partner_nonempty = lse.nonempty.unsqueeze(0).expand_as(x_pair)
    both = torch.logaddexp(own, partners)
    difference = torch.where(own_nonempty & partner_nonempty, both, torch.where(own_nonempty, own, partners))
    return difference, own_nonempty | partner_nonempty


def versus_lse_terms(term: VersusLse, x_pos, x_neg, kept_pos, kept_neg):
    """[N, N] terms of the kept positive pairs and where they are > 0 in exact arithmetic (None when
    unknown)."""
    partner = term.rows == "anchor_and_positive"
    if term.reference == "positives_and_negatives":
        logits = torch.where(kept_pos, x_pos, x_neg)
        z, nonempty = _difference_to_reference(row_lse(logits, kept_pos | kept_neg), x_pos, partner=False)
        # z = -log softmax of the pair among >= 1 members: > 0 exactly when there is a second one.
        members = kept_pos.sum(1) + kept_neg.sum(1)
        positive = (members >= 2).unsqueeze(1).expand_as(z)
    else:
        difference, nonempty = _difference_to_reference(row_lse(x_neg, kept_neg), x_pos, partner)
        if term.reference == "pair_and_negatives":
            # log(1 + sum_n e^{x_n - x_p}) from the difference: precise for the tiny terms of easy pairs.
            z = torch.where(
                nonempty, torch.logaddexp(torch.zeros_like(difference), difference), torch.zeros_like(difference)
            )
            positive = nonempty
        else:
            # PML's masked log-sum-exp is 0 over no negatives: z = 0 - x_p there.
            z = torch.where(nonempty, difference, -x_pos)
            positive = None
    if term.outer == "tiny_floor":
        z = -torch.log(torch.exp(-z) + torch.finfo(z.dtype).tiny)
    elif term.outer == "squared_hinge_half":
        positive = z > 0
        z = torch.relu(z) ** 2 / 2
    zero = torch.zeros_like(z)
    return torch.where(kept_pos, z, zero), (positive & kept_pos if positive is not None else None)


def side_terms(side: Side, x: torch.Tensor, kept: torch.Tensor, versus=None) -> _SideValues:
    """[N, N] terms of one side (0 off the kept pairs) and where they are > 0 (None if unknown)."""
    if isinstance(side.term, VersusLse):
        return _SideValues(*versus())
    if side.term == "hinge":
        return _SideValues(torch.where(kept, torch.relu(x), torch.zeros_like(x)), kept & (x > 0))
    return _SideValues(torch.where(kept, x, torch.zeros_like(x)), None)


def reduce_side(side: Side, terms: _SideValues, kept: torch.Tensor) -> _SideValues:
    """The side's reduction (per anchor [N], or the pair terms [N, N] for ``"pairs"``), times its
    ``output_scale``."""
    value, positive = terms
    count = kept.sum(dim=1)
    if side.reduction in ("lse", "lse_add_one"):
        add_one = side.reduction == "lse_add_one"
        value = masked_logsumexp(value, kept, add_one=add_one)
        # log(1 + sum e^x) > 0 exactly when one pair is kept, however small e^x rounds.
        positive = count >= 1 if add_one else None
    elif side.reduction in ("sum", "mean"):
        value = torch.where(kept, value, torch.zeros_like(value)).sum(dim=1)
        if side.reduction == "mean":
            value = value / count.clamp(min=1).to(value.dtype)
        positive = positive.any(dim=1) if positive is not None else None
    if side.output_scale != 1:
        value = side.output_scale * value
        if side.output_scale < 0:
            positive = None
    return _SideValues(value, positive)


def combine_sides(rule: PairRule, positives: _SideValues, negatives: _SideValues, kept_pos, kept_neg) -> _SideValues:
    """[N] each anchor's loss from its side values, and where it is > 0 (None if unknown)."""
    combine = rule.combine
    if combine.kind == "positives":
        loss, positive = positives
    elif combine.kind == "sum":
        loss = positives.value + negatives.value
        known = positives.positive is not None and negatives.positive is not None
        positive = positives.positive | negatives.positive if known else None
    elif combine.kind == "softplus_of_sum":
        loss = F.softplus(positives.value + negatives.value, beta=1, threshold=20)
        positive = torch.ones_like(loss, dtype=torch.bool)
    else:  # hinge_of_sum: decided by the hinge's argument
        argument = positives.value + negatives.value
        loss, positive = torch.relu(argument), argument > 0
    if combine.zero_unless_both_sides:
        has_both = kept_pos.any(dim=1) & kept_neg.any(dim=1)
        loss = loss * has_both.to(loss.dtype)  # PML's CircleLoss multiplies by its row mask
        positive = positive & has_both if positive is not None else None
    return _SideValues(loss, positive)


def _count(positive: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if positive is None:
        return torch.full(like.shape[:1], -1, dtype=torch.int64, device=like.device)
    return positive.sum(dim=1) if positive.dim() == 2 else positive.to(torch.int64)


def pair_rule_forward(embeddings: torch.Tensor, labels: torch.Tensor, rule: PairRule) -> PairRuleTerms:
    """Interprets ``rule`` on one batch.

    Args:
        embeddings: [N, D] floating tensor (checked by the op: float32 or float64 here).
        labels: [N] int64 class ids.
        rule: the :class:`~embedplug.pair_rules.PairRule`.

    Returns:
        :class:`PairRuleTerms`: per-anchor term sums [S, N], their counts, and the kept pair counts.
        An anchor's sums are NaN when its row of a measure is not finite (non-finite embeddings).
    """
    positive_mask, negative_mask = pair_masks(labels)
    matrices: dict[tuple[str, bool], torch.Tensor] = {}
    for side in (rule.positives, rule.negatives):
        key = (side.measure, side.normalize)
        if key not in matrices:
            matrices[key] = measure_matrix(embeddings, *key)
    measure_pos = matrices[(rule.positives.measure, rule.positives.normalize)]
    measure_neg = matrices[(rule.negatives.measure, rule.negatives.normalize)]
    kept_pos, kept_neg = mining_filters(rule, measure_pos, positive_mask, negative_mask)
    x_pos = side_logits(rule.positives, measure_pos, kept_pos)
    x_neg = side_logits(rule.negatives, measure_neg, kept_neg)

    def versus():
        return versus_lse_terms(rule.positives.term, x_pos, x_neg, kept_pos, kept_neg)

    positives = reduce_side(rule.positives, side_terms(rule.positives, x_pos, kept_pos, versus), kept_pos)
    negatives = reduce_side(rule.negatives, side_terms(rule.negatives, x_neg, kept_neg), kept_neg)
    positive_pairs, negative_pairs = kept_pos.sum(dim=1), kept_neg.sum(dim=1)

    over = rule.reducer.over
    if over == "anchors":
        loss, positive = combine_sides(rule, positives, negatives, kept_pos, kept_neg)
        streams = [(loss, _count(positive, loss), torch.ones_like(positive_pairs))]
    else:
        sides = [(positives, positive_pairs)]
        if over == "pairs_of_each_side":
            sides.append((negatives, negative_pairs))
        streams = [(value.sum(dim=1), _count(positive, value), count) for (value, positive), count in sides]
    # Non-finite embeddings: NaN for every anchor whose measure row is not finite (adds exactly 0
    # elsewhere), as embedplug's other losses; PML's miner would drop such pairs silently.
    poison = sum((matrix * 0).sum(dim=1) for matrix in matrices.values())
    loss_sums = torch.stack([value + poison for value, _, _ in streams])
    counted = torch.stack([count for _, count, _ in streams])
    terms = torch.stack([elements for _, _, elements in streams])
    return PairRuleTerms(loss_sums, counted, terms, positive_pairs, negative_pairs)
