"""Label-aware pair losses described as data.

A :class:`PairRule` says, for each side (the positive and the negative pairs of every anchor), how a
pair's measure becomes a term and how an anchor's terms are reduced, how the sides combine, and how
the batch is reduced. It holds no function, so one interpreter runs every rule: today the exact
fused kernel (:func:`embedplug.ops.pair_rule_forward`, CPU and CUDA, O(N) memory), whose oracle is the
exact pure-torch interpreter (:mod:`embedplug.reference.pair_rule`).

>>> from embedplug.pair_rules import presets
>>> rule = presets.contrastive(pos_margin=0.0, neg_margin=1.0)   # PML's ContrastiveLoss
>>> # embedplug.functional.pair_rule_loss(embeddings, labels, rule)

:mod:`embedplug.pair_rules.presets` holds pytorch-metric-learning's pair losses as rules;
docs/pair-rules.md describes every field.
"""

from embedplug.pair_rules import presets
from embedplug.pair_rules._checks import PairRuleError
from embedplug.pair_rules.encoding import EncodedRule, decode, encode
from embedplug.pair_rules.parts import (
    Affine,
    Combine,
    MiningFilter,
    Reducer,
    SelfPacedWeight,
    Side,
    VersusLse,
)
from embedplug.pair_rules.rule import PairRule

__all__ = [
    "Affine",
    "Combine",
    "EncodedRule",
    "MiningFilter",
    "PairRule",
    "PairRuleError",
    "Reducer",
    "SelfPacedWeight",
    "Side",
    "VersusLse",
    "decode",
    "encode",
    "presets",
]
