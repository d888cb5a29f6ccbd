"""``pair_rule_forward``: a :class:`~embedplug.pair_rules.PairRule` interpreted on one batch, and its
batch reducer.

There is no fused pair-rule kernel yet (no schema, so no :class:`~embedplug.ops.spec.OpSpec`): the op
checks its inputs at this boundary and runs the exact pure-torch interpreter
(:mod:`embedplug.reference.pair_rule`, N x N memory), which will be that kernel's reference. The
outputs are already the kernel's (per-anchor sums and counts, O(N)), and the reducer is declared
here with the op, as for :mod:`embedplug.ops.labelled_contrastive`.
"""

from __future__ import annotations

import torch

from embedplug._validation import check_embeddings, check_labels
from embedplug.ops.labelled_contrastive import zero_loss
from embedplug.pair_rules import PairRule
from embedplug.reference import pair_rule as reference
from embedplug.reference.pair_rule import PairRuleTerms

CALLER = "embedplug.ops.pair_rule_forward"
BACKEND_REASON = "pure-torch reference: no fused kernel for pair rules yet"


def pair_rule_forward(embeddings: torch.Tensor, labels: torch.Tensor, rule: PairRule) -> PairRuleTerms:
    """Runs ``rule`` on a batch: the per-anchor term sums and counts the batch reducer takes.

    Args:
        embeddings: [N, D] floating tensor, N >= 1 (float16/bfloat16 are computed in float32).
        labels: N integer class ids ([N] or [N, 1]) on the embeddings' device.
        rule: a :class:`~embedplug.pair_rules.PairRule`.

    Returns:
        :class:`~embedplug.reference.pair_rule.PairRuleTerms`: ``loss_sums`` [S, N] (differentiable),
        ``counted`` and ``terms`` [S, N] int64, ``positive_pairs`` and ``negative_pairs`` [N] int64.

    Raises:
        TypeError, ValueError: naming the bad input (shape, dtype, device, labels, rule).
    """
    check_embeddings(embeddings, CALLER)
    labels = check_labels(labels, embeddings, CALLER)
    if not isinstance(rule, PairRule):
        raise TypeError(f"{CALLER}: rule must be an embedplug.pair_rules.PairRule, got {type(rule).__name__}")
    if embeddings.device.type == "meta":
        raise ValueError(
            f"{CALLER}: the inputs are on the meta device, which has no data to compute on; pass real tensors"
        )
    if embeddings.dtype in (torch.float16, torch.bfloat16):
        embeddings = embeddings.float()
    return reference.pair_rule_forward(embeddings, labels, rule)


def reduce_pair_rule(rule: PairRule, embeddings: torch.Tensor, outputs: PairRuleTerms) -> torch.Tensor:
    """The batch loss of :func:`pair_rule_forward`'s ``outputs``, by ``rule.reducer``.

    ``"mean"`` divides the sum of the terms by their number, ``"sum"`` adds them, ``"avg_non_zero"``
    divides by the number of terms that are > 0 in exact arithmetic (``counted``; the other terms are
    exactly 0). Each side is reduced on its own for ``"pairs_of_each_side"`` and the two are added.
    An empty set of terms, and the rule's degenerate batches, give PML's zero loss
    (``sum(embeddings * 0)``).

    Args:
        rule: the rule the outputs came from.
        embeddings: the [N, D] embeddings given to the op.
        outputs: what :func:`pair_rule_forward` returned.

    Returns:
        A scalar in the dtype of ``outputs.loss_sums``.
    """
    loss_sums, counted, terms, positive_pairs, negative_pairs = outputs
    zero = zero_loss(embeddings, loss_sums.dtype)
    kind = rule.reducer.kind
    if kind == "avg_non_zero" and bool((counted < 0).any()):
        raise RuntimeError("reduce_pair_rule: avg_non_zero needs exact counts, which this rule's outputs lack")
    side_losses = []
    for side in range(loss_sums.shape[0]):
        total = loss_sums[side].sum()
        divisor = {"sum": None, "mean": terms[side].sum(), "avg_non_zero": counted[side].sum()}[kind]
        if divisor is None:
            side_losses.append(torch.where(terms[side].sum() == 0, zero, total))
        else:
            side_losses.append(torch.where(divisor == 0, zero, total / divisor.clamp(min=1).to(total.dtype)))
    loss = side_losses[0] if len(side_losses) == 1 else torch.stack(side_losses).sum()
    degenerate = torch.zeros((), dtype=torch.bool, device=loss.device)
    total_positive, total_negative = positive_pairs.sum(), negative_pairs.sum()
    if rule.zero_if_few_pairs:
        degenerate = degenerate | ((total_positive <= 1) & (total_negative <= 1))
    if rule.zero_without_both_pair_kinds:
        degenerate = degenerate | (total_positive == 0) | (total_negative == 0)
    return torch.where(degenerate, zero, loss)


def backend(device_type: str = "cpu") -> dict:
    """``{"implementation": "reference", "reason": ...}``: pair rules run on the pure-torch
    interpreter on every device until the fused interpreter kernel lands."""
    return {"implementation": "reference", "reason": BACKEND_REASON}
