"""A label-aware pair loss as data: :class:`PairRule`, checked as a whole when it is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from embedplug.pair_rules._checks import PairRuleError, flag, instance
from embedplug.pair_rules.parts import Combine, Reducer, Side, VersusLse


@dataclass(frozen=True)
class PairRule:
    """A label-aware pair loss: per anchor, its positive pairs (same label, not itself) and its
    negative pairs (another label), each side scored and reduced by a :class:`Side`, the sides
    combined per anchor by a :class:`Combine` (or their pair terms kept), then reduced over the batch.

    Data only: numbers, names and the frozen parts of :mod:`embedplug.pair_rules.parts`, never a
    function, so one interpreter (the fused kernel, with the exact pure-torch one as its reference)
    runs every rule. A rule that cannot be interpreted raises :class:`PairRuleError` (or ``TypeError`` for a
    wrong type) when it is built, naming the part (``"negatives.reduction: ..."``).

    The loss is pytorch-metric-learning's zero loss (``sum(embeddings * 0)``: 0 with a zero
    gradient) when ``zero_if_few_pairs`` and the kept pairs number at most one positive and at most
    one negative (``GenericPairLoss``'s early exit), or when ``zero_without_both_pair_kinds`` and the
    batch keeps no positive pair or no negative pair.

    Attributes:
        positives: the :class:`Side` of the positive pairs.
        negatives: the :class:`Side` of the negative pairs.
        reducer: the batch :class:`Reducer`.
        combine: the per-anchor :class:`Combine`; required when ``reducer.over == "anchors"``, None
            otherwise.
        zero_if_few_pairs: GenericPairLoss's early exit (every pytorch-metric-learning pair loss).
        zero_without_both_pair_kinds: zero loss unless the batch keeps both kinds of pairs.
    """

    positives: Side
    negatives: Side
    reducer: Reducer = field(default_factory=Reducer)
    combine: Combine | None = None
    zero_if_few_pairs: bool = True
    zero_without_both_pair_kinds: bool = False

    def __post_init__(self) -> None:
        instance("PairRule.positives", self.positives, Side)
        instance("PairRule.negatives", self.negatives, Side)
        instance("PairRule.reducer", self.reducer, Reducer)
        instance("PairRule.combine", self.combine, Combine, optional=True)
        flag("PairRule.zero_if_few_pairs", self.zero_if_few_pairs)
        flag("PairRule.zero_without_both_pair_kinds", self.zero_without_both_pair_kinds)
        _check_term_sides(self)
        _check_filters(self)
        _check_levels(self)
        _check_negatives_are_read(self)
        if self.reducer.kind == "avg_non_zero":
            _check_zeros_are_known(self)
        _check_one_gram(self)

    @property
    def negatives_only_as_reference(self) -> bool:
        """Whether the negatives enter only through the positives' :class:`VersusLse` term."""
        over_anchors = self.reducer.over == "anchors"
        return (over_anchors and self.combine.kind == "positives") or self.reducer.over == "positive_pairs"

    def as_dict(self) -> dict:
        """The rule as nested plain dicts (JSON-able), e.g. for a model card."""
        return dataclasses.asdict(self)


def _check_term_sides(rule: PairRule) -> None:
    if isinstance(rule.negatives.term, VersusLse):
        raise PairRuleError(
            "negatives.term: a VersusLse term is a positive pair against the anchor's log-sum-exp; it is defined on "
            "positives only"
        )
    if isinstance(rule.positives.term, VersusLse) and rule.negatives.term != "logit":
        raise PairRuleError(
            f"negatives.term: the positives' VersusLse term reads the negatives' logits, so negatives.term must be "
            f"'logit', got {rule.negatives.term!r}"
        )


def _check_one_gram(rule: PairRule) -> None:
    # The fused kernel reads each pair's Gram entry once and derives both sides' measures from it:
    # that serves two similarities or two distances of the same rows, not a mix.
    positives, negatives = rule.positives, rule.negatives
    kind = {"cosine": "similarity", "dot": "similarity", "euclidean": "distance", "squared_euclidean": "distance"}
    if kind[positives.measure] != kind[negatives.measure] or positives.normalize != negatives.normalize:
        raise PairRuleError(
            f"negatives.measure: the fused kernel derives both sides' measures from one Gram matrix, so both need "
            f"similarities or both distances of the same rows; positives use {positives.measure!r} "
            f"(normalize={positives.normalize}), negatives {negatives.measure!r} (normalize={negatives.normalize})"
        )


def _check_filters(rule: PairRule) -> None:
    positives, negatives = rule.positives, rule.negatives
    for name, side in (("positives", positives), ("negatives", negatives)):
        if side.filter is not None and (positives.measure, positives.normalize) != (
            negatives.measure,
            negatives.normalize,
        ):
            raise PairRuleError(
                f"{name}.filter: a MiningFilter compares a pair with the other side's hardest pair, so both sides need "
                f"one measure; positives use {positives.measure!r} (normalize={positives.normalize}), negatives "
                f"{negatives.measure!r} (normalize={negatives.normalize})"
            )


def _check_levels(rule: PairRule) -> None:
    over = rule.reducer.over
    if over == "anchors":
        if rule.combine is None:
            raise PairRuleError(
                "combine: reducer.over='anchors' needs a Combine (how an anchor's positive and negative values make "
                "its loss)"
            )
        for name, side in (("positives", rule.positives), ("negatives", rule.negatives)):
            if not side.per_anchor:
                raise PairRuleError(
                    f"{name}.reduction: 'pairs' hands each pair's term to the batch reducer, but reducer.over is "
                    "'anchors'; use 'lse', 'lse_add_one', 'sum' or 'mean', or a pair-level reducer"
                )
        return
    if rule.combine is not None:
        raise PairRuleError(
            f"combine: reducer.over={over!r} reduces pair terms directly, with no per-anchor combination; leave "
            "combine None"
        )
    sides = ("positives",) if over == "positive_pairs" else ("positives", "negatives")
    for name in sides:
        if getattr(rule, name).reduction != "pairs":
            raise PairRuleError(
                f"{name}.reduction: reducer.over={over!r} reduces that side's pair terms, so the side needs "
                f"reduction 'pairs', got {getattr(rule, name).reduction!r}"
            )


def _check_negatives_are_read(rule: PairRule) -> None:
    if not rule.negatives_only_as_reference:
        return
    if not isinstance(rule.positives.term, VersusLse):
        raise PairRuleError(
            "negatives: this rule never reads them (the loss is the positives' alone and positives.term is not a "
            "VersusLse, the term that compares a positive with the negatives)"
        )
    if rule.negatives.reduction != "lse":
        raise PairRuleError(
            "negatives.reduction: the negatives enter this rule only through the log-sum-exp the positives' VersusLse "
            f"term reads; set 'lse', got {rule.negatives.reduction!r}"
        )


def zeros_known(side: Side) -> str | None:
    """None when every value of ``side`` (per anchor, or per pair) is >= 0 and is 0 exactly where the
    pair structure or a hinge argument says so; otherwise why not."""
    if side.output_scale < 0:
        return f"output_scale {side.output_scale} < 0 makes its values <= 0"
    term = side.term
    if term == "hinge":
        return None
    if term == "logit":
        if side.reduction == "lse_add_one":
            return None  # log(1 + sum e^x) > 0 exactly when a pair is kept, however small e^x
        return f"the {side.reduction!r} reduction of a logit can be negative"
    if term.outer == "squared_hinge_half":
        return None
    if term.reference == "negatives":
        return "a VersusLse term against the negatives alone (z = L - x) can be negative"
    return None  # -log softmax >= 0, and > 0 exactly when the softmax has a second member


def _check_zeros_are_known(rule: PairRule) -> None:
    over = rule.reducer.over
    if over == "anchors":
        kind = rule.combine.kind
        if kind in ("softplus_of_sum", "hinge_of_sum"):
            return
        names = ("positives",) if kind == "positives" else ("positives", "negatives")
    elif over == "positive_pairs":
        names = ("positives",)
    else:
        names = ("positives", "negatives")
    for name in names:
        reason = zeros_known(getattr(rule, name))
        if reason is not None:
            raise PairRuleError(
                f"reducer: 'avg_non_zero' counts the terms that are > 0 in exact arithmetic, decided from the pair "
                f"structure and hinge arguments; {name}: {reason}. Use 'lse_add_one', a hinge, a softplus/hinge "
                "combine, or reducer kind 'mean'"
            )
