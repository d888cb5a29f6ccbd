"""A :class:`~embedplug.pair_rules.PairRule` as the two flat lists the fused op takes, and back.

The layout is ``csrc/pair_rule_rules.h``'s (``kSideCodes``, ``kSideParams``, ``kRuleCodes``): per side
(positives, then negatives) seven integer codes and seven reals, then the rule's seven codes, the
first of them the encoding's version. ``decode(encode(rule)) == rule`` for every kernel-relevant
field; the batch-level switches (the reducer's kind, the zero-loss rules) stay in Python, where the
batch is reduced.
"""

from __future__ import annotations

from typing import NamedTuple

from embedplug.pair_rules.parts import (
    COMBINE_KINDS,
    MEASURES,
    REDUCER_OVER,
    REDUCTIONS,
    VERSUS_OUTERS,
    VERSUS_REFERENCES,
    Affine,
    Combine,
    MiningFilter,
    Reducer,
    SelfPacedWeight,
    Side,
    VersusLse,
)
from embedplug.pair_rules.rule import PairRule

VERSION = 1
SIDE_CODES = 7
SIDE_PARAMS = 7
RULE_CODES = 7
# The C++ enums' values (csrc/pair_rule_rules.h) are the positions in these tuples.
_TERMS = ("logit", "hinge", "versus")
# Matches VersusReference's order in the header, which is not VERSUS_REFERENCES' order.
_VERSUS_REFERENCES = ("pair_and_negatives", "positives_and_negatives", "negatives")
assert set(_VERSUS_REFERENCES) == set(VERSUS_REFERENCES)


class EncodedRule(NamedTuple):
    """``params``: 14 floats; ``codes``: 21 ints (see the module docstring)."""

    params: tuple[float, ...]
    codes: tuple[int, ...]


def _side(side: Side) -> tuple[list[int], list[float]]:
    term = "versus" if isinstance(side.term, VersusLse) else side.term
    codes = [
        MEASURES.index(side.measure),
        int(side.normalize),
        int(side.weight is not None),
        int(side.weight is not None and side.weight.increasing),
        int(side.filter is not None),
        _TERMS.index(term),
        REDUCTIONS.index(side.reduction),
    ]
    params = [
        side.angle_offset,
        side.weight.optimum if side.weight is not None else 0.0,
        side.affine.scale,
        side.affine.shift,
        side.affine.temperature,
        side.filter.epsilon if side.filter is not None else 0.0,
        side.output_scale,
    ]
    return codes, [float(p) for p in params]


def encode(rule: PairRule) -> EncodedRule:
    """The rule as the op's ``(params, codes)``."""
    if not isinstance(rule, PairRule):
        raise TypeError(f"encode: rule must be an embedplug.pair_rules.PairRule, got {type(rule).__name__}")
    positive_codes, positive_params = _side(rule.positives)
    negative_codes, negative_params = _side(rule.negatives)
    versus = rule.positives.term if isinstance(rule.positives.term, VersusLse) else VersusLse("pair_and_negatives")
    combine = rule.combine
    codes = positive_codes + negative_codes + [
        VERSION,
        _VERSUS_REFERENCES.index(versus.reference),
        int(versus.rows == "anchor_and_positive"),
        VERSUS_OUTERS.index(versus.outer),
        -1 if combine is None else COMBINE_KINDS.index(combine.kind),
        int(combine is not None and combine.zero_unless_both_sides),
        REDUCER_OVER.index(rule.reducer.over),
    ]
    return EncodedRule(tuple(positive_params + negative_params), tuple(codes))


def _decode_side(codes, params, versus: VersusLse | None) -> Side:
    measure, normalize, has_weight, increasing, has_filter, term, reduction = codes
    angle_offset, optimum, scale, shift, temperature, epsilon, output_scale = params
    term_name = _TERMS[term]
    return Side(
        measure=MEASURES[measure],
        normalize=bool(normalize),
        angle_offset=angle_offset,
        weight=SelfPacedWeight(optimum, increasing=bool(increasing)) if has_weight else None,
        affine=Affine(scale, shift, temperature),
        filter=MiningFilter(epsilon) if has_filter else None,
        term=versus if term_name == "versus" else term_name,
        reduction=REDUCTIONS[reduction],
        output_scale=output_scale,
    )


def decode(params, codes, *, reducer_kind: str = "mean", zero_if_few_pairs: bool = True,
           zero_without_both_pair_kinds: bool = False) -> PairRule:
    """The :class:`PairRule` of ``(params, codes)``; the batch-level fields the lists do not carry
    are given as keywords."""
    params, codes = [float(p) for p in params], [int(c) for c in codes]
    if len(params) != 2 * SIDE_PARAMS or len(codes) != 2 * SIDE_CODES + RULE_CODES:
        raise ValueError(
            f"decode: an encoded rule has {2 * SIDE_PARAMS} params and {2 * SIDE_CODES + RULE_CODES} codes, got "
            f"{len(params)} and {len(codes)}"
        )
    version, reference, partner, outer, combine, both_sides, over = codes[2 * SIDE_CODES:]
    if version != VERSION:
        raise ValueError(f"decode: encoding version {version}, this embedplug reads {VERSION}")
    versus = VersusLse(_VERSUS_REFERENCES[reference], "anchor_and_positive" if partner else "anchor", VERSUS_OUTERS[outer])
    positives = _decode_side(codes[:SIDE_CODES], params[:SIDE_PARAMS], versus)
    negatives = _decode_side(codes[SIDE_CODES : 2 * SIDE_CODES], params[SIDE_PARAMS:], None)
    return PairRule(
        positives=positives,
        negatives=negatives,
        reducer=Reducer(reducer_kind, REDUCER_OVER[over]),
        combine=None if combine < 0 else Combine(COMBINE_KINDS[combine], bool(both_sides)),
        zero_if_few_pairs=zero_if_few_pairs,
        zero_without_both_pair_kinds=zero_without_both_pair_kinds,
    )
