"""A label-aware pair loss described by a :class:`~embedplug.pair_rules.PairRule`, on raw embeddings."""

from __future__ import annotations

import torch

from embedplug._validation import check_embeddings, check_labels, warns_non_finite_input
from embedplug.ops import pair_rule as ops
from embedplug.pair_rules import PairRule


@warns_non_finite_input
def pair_rule_loss(embeddings: torch.Tensor, labels: torch.Tensor, rule: PairRule) -> torch.Tensor:
    """The loss ``rule`` describes, on one labelled batch.

    Args:
        embeddings: [N, D] floating tensor (float16/bfloat16 are computed in float32).
        labels: [N] (or [N, 1]) class ids (floats are classes by equality, as sentence-transformers').
        rule: a :class:`~embedplug.pair_rules.PairRule`, e.g. one of
            :mod:`embedplug.pair_rules.presets` (pytorch-metric-learning's pair losses).

    Returns:
        A scalar, differentiable in ``embeddings``. Runs on the fused pair-rule op (O(N) memory), or on
        the exact pure-torch interpreter where the extension has no kernel (and for a distance
        rule's small batches, see :func:`embedplug.ops.pair_rule.pair_rule_forward`).
    """
    caller = "pair_rule_loss"
    check_embeddings(embeddings, caller)
    labels = check_labels(labels, embeddings, caller)
    if not isinstance(rule, PairRule):
        raise TypeError(f"{caller}: rule must be an embedplug.pair_rules.PairRule, got {type(rule).__name__}")
    outputs = ops.pair_rule_forward(embeddings, labels, rule)
    return ops.reduce_pair_rule(rule, embeddings, outputs)
