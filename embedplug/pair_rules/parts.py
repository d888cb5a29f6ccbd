"""The parts of a pair rule: how one side (the positive pairs or the negative pairs of each anchor)
turns a pair's measure into a term and reduces the anchor's terms, and how the batch is reduced.

Every part is a frozen dataclass holding numbers and names only, checked when it is built; the
checks that involve both sides live in :class:`embedplug.pair_rules.PairRule`.

For one side, the pipeline per kept pair ``(i, j)`` of anchor ``i`` is::

    s  = measure(e_i, e_j)                       # cosine, dot, euclidean, squared_euclidean
    s' = cos(acos(s) + angle_offset)             # only when angle_offset != 0 (cosine)
    x  = scale * w * (s' - shift) / temperature  # w: the self-paced weight (1 without one)
    t  = term(x)                                 # "logit": x, "hinge": [x]_+, or VersusLse
    side value of i = output_scale * reduction over the kept pairs of i (or each t, "pairs")

A pair is kept when it is a positive (same label, not the anchor itself) or a negative (another
label) and passes the side's :class:`MiningFilter`, if any.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embedplug.pair_rules._checks import PairRuleError, choice, flag, instance, real, set_field

MEASURES = ("cosine", "dot", "euclidean", "squared_euclidean")
SIMILARITIES = ("cosine", "dot")
TERMS = ("logit", "hinge")
REDUCTIONS = ("lse", "lse_add_one", "sum", "mean", "pairs")
PER_ANCHOR_REDUCTIONS = ("lse", "lse_add_one", "sum", "mean")
VERSUS_REFERENCES = ("pair_and_negatives", "positives_and_negatives", "negatives")
VERSUS_ROWS = ("anchor", "anchor_and_positive")
VERSUS_OUTERS = ("identity", "tiny_floor", "squared_hinge_half")
COMBINE_KINDS = ("sum", "softplus_of_sum", "hinge_of_sum", "positives")
REDUCER_KINDS = ("mean", "sum", "avg_non_zero")
REDUCER_OVER = ("anchors", "positive_pairs", "pairs_of_each_side")


@dataclass(frozen=True)
class Affine:
    """``x = scale * (s - shift) / temperature``, evaluated in that order (each identity step is
    exact, so ``Affine()`` leaves ``s`` unchanged).

    With a :class:`SelfPacedWeight` ``w``, ``x = (scale * w) * (s - shift) / temperature``: PML's
    CircleLoss order.

    Attributes:
        scale: any finite number (negative to turn a distance into a logit, e.g. ``m - d``).
        shift: any finite number.
        temperature: a finite number > 0 (SupCon's and NTXent's division).
    """

    scale: float = 1.0
    shift: float = 0.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        set_field(self, "scale", real("Affine.scale", self.scale))
        set_field(self, "shift", real("Affine.shift", self.shift))
        set_field(self, "temperature", real("Affine.temperature", self.temperature, positive=True))


@dataclass(frozen=True)
class SelfPacedWeight:
    """A per-pair weight computed from the raw measure ``s`` and held constant in the gradient
    (detached), as CircleLoss's ``[O_p - s]_+`` and ``[s - O_n]_+``.

    Attributes:
        optimum: the measure at which the weight vanishes.
        increasing: True for ``w = [s - optimum]_+`` (negatives: the more similar, the heavier),
            False for ``w = [optimum - s]_+`` (positives).
    """

    optimum: float
    increasing: bool

    def __post_init__(self) -> None:
        set_field(self, "optimum", real("SelfPacedWeight.optimum", self.optimum))
        flag("SelfPacedWeight.increasing", self.increasing)


@dataclass(frozen=True)
class MiningFilter:
    """pytorch-metric-learning's ``MultiSimilarityMiner(epsilon)`` for one side, on the raw measure.

    For similarities (cosine, dot): a positive is kept when ``s_ip - epsilon < max_n s_in`` (the
    anchor's hardest negative), a negative when ``s_in + epsilon > min_p s_ip`` (its hardest
    positive). For distances the comparisons mirror: a positive is kept when ``d_ip + epsilon >
    min_n d_in``, a negative when ``d_in - epsilon < max_p d_ip``. The hardest pair is taken over all
    of the anchor's pairs of the other side (before that side's own filter). Comparisons are strict,
    and an anchor without pairs on the other side keeps nothing. Both sides must use one measure.

    Attributes:
        epsilon: the miner's margin (any finite number).
    """

    epsilon: float

    def __post_init__(self) -> None:
        set_field(self, "epsilon", real("MiningFilter.epsilon", self.epsilon))


@dataclass(frozen=True)
class VersusLse:
    """A positive pair's term against a per-anchor log-sum-exp: ``z = L - x_ij``, then ``outer(z)``.

    ``L`` is the log-sum-exp of logits ``x`` over ``reference``:

    - ``"pair_and_negatives"``: the pair itself and the anchor's kept negatives, so ``z`` is
      ``-log softmax`` of the pair among them (NTXentLoss, TupletMarginLoss; ``z = 0`` without
      negatives);
    - ``"positives_and_negatives"``: every kept positive and negative of the anchor (SupConLoss);
    - ``"negatives"``: the kept negatives only; 0 when there are none (pytorch-metric-learning's
      masked log-sum-exp), as LiftedStructureLoss.

    With ``rows="anchor_and_positive"`` the negatives of the positive ``j`` join those of the anchor
    ``i`` (LiftedStructureLoss; not with ``"positives_and_negatives"``).

    ``outer``: ``"identity"`` (``z``), ``"tiny_floor"`` (``-log(exp(-z) + tiny)``, ``tiny`` the
    smallest normal number of the dtype: NTXentLoss's ``log(p + tiny)``, which saturates at
    ``-log(tiny)`` (87.3 in float32)), or ``"squared_hinge_half"`` (``[z]_+^2 / 2``).

    Attributes:
        reference: what ``L`` sums over (see above).
        rows: ``"anchor"`` or ``"anchor_and_positive"``.
        outer: the function of ``z`` that is the pair's term.
    """

    reference: str
    rows: str = "anchor"
    outer: str = "identity"

    def __post_init__(self) -> None:
        choice("VersusLse.reference", self.reference, VERSUS_REFERENCES)
        choice("VersusLse.rows", self.rows, VERSUS_ROWS)
        choice("VersusLse.outer", self.outer, VERSUS_OUTERS)
        if self.rows == "anchor_and_positive" and self.reference == "positives_and_negatives":
            raise PairRuleError(
                "VersusLse.rows: 'anchor_and_positive' adds the positive's negatives to the reference; it needs "
                "reference 'negatives' or 'pair_and_negatives', got 'positives_and_negatives'"
            )


@dataclass(frozen=True)
class Side:
    """How one side (the positive or the negative pairs of each anchor) scores and reduces its pairs.

    See the module docstring for the order of the steps.

    Attributes:
        measure: ``"cosine"``, ``"dot"``, ``"euclidean"`` or ``"squared_euclidean"``.
        normalize: L2-normalise the embeddings first. Fixed for similarities (cosine: True, dot:
            False); for distances it defaults to True, as pytorch-metric-learning's ``LpDistance``.
        angle_offset: radians added to the angle of a cosine: ``s' = cos(acos(s) + angle_offset)``
            (TupletMarginLoss uses ``-margin``). 0 leaves ``s`` unchanged.
        weight: an optional :class:`SelfPacedWeight`.
        affine: the :class:`Affine` map to the logit ``x``.
        filter: an optional :class:`MiningFilter`.
        term: ``"logit"`` (``x``), ``"hinge"`` (``[x]_+``), or a :class:`VersusLse` (positives only).
        reduction: per anchor over its kept pairs: ``"lse"`` (``log sum e^t``, 0 without pairs),
            ``"lse_add_one"`` (``log(1 + sum e^t)``, PML's ``add_one``; this is also the softplus of
            the side's log-sum-exp), ``"sum"``, ``"mean"`` (0 without pairs); or ``"pairs"``: each
            pair's term goes to the batch reducer (``Reducer.over`` is then a pair level).
        output_scale: a finite non-zero factor on the side's value (MultiSimilarity's ``1/alpha``).
    """

    measure: str = "cosine"
    normalize: bool | None = None
    angle_offset: float = 0.0
    weight: SelfPacedWeight | None = None
    affine: Affine = field(default_factory=Affine)
    filter: MiningFilter | None = None
    term: str | VersusLse = "logit"
    reduction: str = "lse"
    output_scale: float = 1.0

    def __post_init__(self) -> None:
        measure = choice("Side.measure", self.measure, MEASURES)
        if self.normalize is None:
            set_field(self, "normalize", measure != "dot")
        flag("Side.normalize", self.normalize)
        if measure == "cosine" and not self.normalize:
            raise PairRuleError(
                "Side.normalize: 'cosine' is the dot product of normalised embeddings; use measure 'dot'"
            )
        if measure == "dot" and self.normalize:
            raise PairRuleError("Side.normalize: the dot product of normalised embeddings is measure 'cosine'")
        set_field(self, "angle_offset", real("Side.angle_offset", self.angle_offset))
        if self.angle_offset != 0 and measure != "cosine":
            raise PairRuleError(
                f"Side.angle_offset: needs measure 'cosine' (the angle is acos of a cosine), got {measure!r}"
            )
        instance("Side.weight", self.weight, SelfPacedWeight, optional=True)
        instance("Side.affine", self.affine, Affine)
        instance("Side.filter", self.filter, MiningFilter, optional=True)
        if not isinstance(self.term, VersusLse):
            if not isinstance(self.term, str):
                raise TypeError(
                    f"Side.term must be 'logit', 'hinge' or a VersusLse, got {self.term!r} ({type(self.term).__name__}); "
                    "a rule holds data, not functions"
                )
            choice("Side.term", self.term, TERMS)
        choice("Side.reduction", self.reduction, REDUCTIONS)
        set_field(self, "output_scale", real("Side.output_scale", self.output_scale, non_zero=True))
        if self.term == "hinge" and self.reduction in ("lse", "lse_add_one"):
            raise PairRuleError(
                f"Side.reduction: {self.reduction!r} reduces logits; a 'hinge' term reduces with 'sum', 'mean' or 'pairs'"
            )
        if isinstance(self.term, VersusLse) and self.reduction in ("lse", "lse_add_one"):
            raise PairRuleError(
                f"Side.reduction: {self.reduction!r} reduces logits; a VersusLse term (already a log-sum-exp against "
                "the pair) reduces with 'sum', 'mean' or 'pairs'"
            )

    @property
    def per_anchor(self) -> bool:
        """Whether the side reduces to one value per anchor (every reduction but ``"pairs"``)."""
        return self.reduction != "pairs"


@dataclass(frozen=True)
class Combine:
    """How an anchor's two side values ``P`` and ``N`` make its loss (``Reducer.over="anchors"``).

    Attributes:
        kind: ``"sum"`` (``P + N``, MultiSimilarityLoss), ``"softplus_of_sum"`` (``softplus(P + N)``,
            torch's with threshold 20, CircleLoss), ``"hinge_of_sum"`` (``[P + N]_+``,
            GeneralizedLiftedStructureLoss) or ``"positives"`` (``P`` alone: the negatives enter
            through the positives' :class:`VersusLse` term, SupConLoss).
        zero_unless_both_sides: an anchor without a kept positive or without a kept negative has
            loss exactly 0 (CircleLoss).
    """

    kind: str = "sum"
    zero_unless_both_sides: bool = False

    def __post_init__(self) -> None:
        choice("Combine.kind", self.kind, COMBINE_KINDS)
        flag("Combine.zero_unless_both_sides", self.zero_unless_both_sides)


@dataclass(frozen=True)
class Reducer:
    """The batch reduction: of what (``over``) and how (``kind``).

    ``over``: ``"anchors"`` (each anchor's combined loss, all N anchors), ``"positive_pairs"`` (the
    positives' per-pair terms; ``positives.reduction="pairs"``), or ``"pairs_of_each_side"`` (each
    side's per-pair terms reduced on their own, then added: ContrastiveLoss).

    ``kind``: ``"mean"`` (pytorch-metric-learning's ``MeanReducer``), ``"sum"``, or
    ``"avg_non_zero"`` (its ``AvgNonZeroReducer``: the mean of the terms that are > 0). A term counts
    as zero only when it is zero in exact arithmetic (an empty side, an inactive hinge), never because
    a float rounded a positive value to 0: counts come from the pair structure and from hinge
    arguments, so the rule must make every term's zeros known that way (it is checked when the rule
    is built). NaN terms count (the loss is NaN). Over an empty set every kind gives PML's zero loss.

    Attributes:
        kind: ``"mean"``, ``"sum"`` or ``"avg_non_zero"``.
        over: ``"anchors"``, ``"positive_pairs"`` or ``"pairs_of_each_side"``.
    """

    kind: str = "mean"
    over: str = "anchors"

    def __post_init__(self) -> None:
        choice("Reducer.kind", self.kind, REDUCER_KINDS)
        choice("Reducer.over", self.over, REDUCER_OVER)
