"""``embedplug::pair_rule_forward``: a :class:`~embedplug.pair_rules.PairRule` interpreted on one
batch by the fused kernel (CPU and CUDA, O(N) memory), and its batch reducer.

The op takes the rule as the two flat lists :func:`embedplug.pair_rules.encode` writes; its reference
is the exact pure-torch interpreter (:mod:`embedplug.reference.pair_rule`) on the decoded rule. The
outputs are per-anchor sums and counts; the reducer (:func:`reduce_pair_rule`) is declared here with
the op. SupCon, multi-similarity (with and without its miner) and circle run on this op as
presets (:mod:`embedplug.pair_rules.presets`).
"""

from __future__ import annotations

import numbers

import torch

from embedplug._validation import check_embeddings, check_labels
from embedplug.ops import layer
from embedplug.ops.samples import labelled_batches
from embedplug.ops.spec import Arg, Autograd, Embeddings, Labels, OpSpec, Sample
from embedplug.pair_rules import PairRule, PairRuleError, decode, encode
from embedplug.pair_rules import encoding as rule_encoding
from embedplug.reference import pair_rule as reference
from embedplug.reference.pair_rule import PairRuleTerms

CALLER = "embedplug.ops.pair_rule_forward"


def zero_loss(embeddings: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """PML's ``zero_loss``: ``sum(embeddings * 0)`` (0 with a zero gradient; NaN for non-finite input)."""
    return (embeddings * 0).sum().to(dtype)


class EncodedParams(Arg):
    """The rule's reals, as :func:`~embedplug.pair_rules.encode` writes them (finite floats)."""

    def check(self, value, caller):
        values = tuple(value) if isinstance(value, (list, tuple)) else None
        if values is None or len(values) != 2 * rule_encoding.SIDE_PARAMS:
            raise ValueError(f"{caller}: {self.name} must be the {2 * rule_encoding.SIDE_PARAMS} reals of "
                             f"embedplug.pair_rules.encode(rule), got {value!r}")
        if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values):
            raise TypeError(f"{caller}: {self.name} must hold real numbers, got {value!r}")
        return [float(v) for v in values]


class EncodedCodes(Arg):
    """The rule's codes, as :func:`~embedplug.pair_rules.encode` writes them (integers)."""

    def check(self, value, caller):
        values = tuple(value) if isinstance(value, (list, tuple)) else None
        length = 2 * rule_encoding.SIDE_CODES + rule_encoding.RULE_CODES
        if values is None or len(values) != length:
            raise ValueError(f"{caller}: {self.name} must be the {length} codes of embedplug.pair_rules.encode(rule), "
                             f"got {value!r}")
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in values):
            raise TypeError(f"{caller}: {self.name} must hold integers, got {value!r}")
        return [int(v) for v in values]


def _validate(args, caller):
    params, codes = args[2], args[3]
    try:
        decode(params, codes)
    except (ValueError, IndexError, TypeError) as error:
        raise ValueError(f"{caller}: params and codes are not an encoded rule: {error}") from None


def _reference(embeddings, labels, params, codes):
    return tuple(reference.pair_rule_forward(embeddings, labels, decode(params, codes)))


def _streams(codes) -> int:
    return 2 if codes[2 * rule_encoding.SIDE_CODES + 6] == 2 else 1


def _forward_fake(embeddings, labels, params, codes, compute_grad):
    n, s = embeddings.shape[0], _streams(codes)
    unit_grad = embeddings.new_empty((s, n, embeddings.shape[1]) if compute_grad else (0,))
    counts = labels.new_empty((s, n))
    return (embeddings.new_empty((s, n)), counts, labels.new_empty((s, n)), labels.new_empty((n,)), labels.new_empty((n,)),
            unit_grad, labels.new_empty(()))


def _backward_fake(grad_loss_sums, embeddings, *rest):
    return torch.empty_like(embeddings)


def _setup_context(ctx, inputs, output):
    embeddings, labels, params, codes, _ = inputs
    _loss_sums, counted, terms, positive_pairs, negative_pairs, unit_grad, near_duplicates = output
    ctx.save_for_backward(embeddings, labels, unit_grad)
    ctx.rule = (params, codes)
    ctx.mark_non_differentiable(counted, terms, positive_pairs, negative_pairs, unit_grad, near_duplicates)


def _backward(ctx, grad_loss_sums, *_unused):
    embeddings, labels, unit_grad = ctx.saved_tensors
    params, codes = ctx.rule
    grad = torch.ops.embedplug._pair_rule_backward(grad_loss_sums, embeddings, labels, unit_grad, params, codes)
    return grad, None, None, None, None


# torch.cdist's own paths: at most 25 rows it takes exact differences, beyond it the matmul of
# augmented rows the kernel computes too.
CDIST_DIRECT_ROWS = 25
# Up to this batch size the kernel computes the Gram matrix as PML's one product (csrc/cpu/
# pair_rule_kernel.cpp, kSingleProductEntries); the reference's N x N matrices stay small there too.
SINGLE_PRODUCT_ROWS = 2048
DISTANCE_NOTE = (
    f"; distance rules run batches of at most {CDIST_DIRECT_ROWS} rows, and of at most {SINGLE_PRODUCT_ROWS} "
    "rows holding two rows whose distance is mostly rounding, on the reference, to equal torch.cdist"
)


def _needs_reference(args, outputs) -> bool:
    """Whether a distance rule's batch takes the reference, to equal pytorch-metric-learning's
    torch.cdist where no other computation does: a batch of at most 25 rows (cdist takes exact
    differences there), and a batch of at most 2,048 rows holding two rows whose distance is mostly
    rounding (cdist's square root of a rounding, and its backward's division by it). Beyond 2,048
    rows the kernel runs (O(N) memory): its distances are then as close to exact as cdist's.
    Similarities take the kernel always; under torch.compile the check (a data-dependent branch)
    is not taken."""
    measure, n = args[3][0], args[0].shape[0]
    if measure < 2 or torch.compiler.is_compiling():
        return False
    return n <= CDIST_DIRECT_ROWS or (n <= SINGLE_PRODUCT_ROWS and bool(outputs[6].item() > 0))


def _sample_rules():
    """The rules the conformance table runs: every preset, both filters, the measures, an angle, a
    partner reference, a per-side pair reducer and an output scale."""
    from embedplug.pair_rules import presets

    def lifted():
        from embedplug.pair_rules import Affine, Reducer, Side, VersusLse

        return PairRule(
            positives=Side("euclidean", affine=Affine(-1.0, 0.2),
                           term=VersusLse("negatives", rows="anchor_and_positive", outer="squared_hinge_half"),
                           reduction="pairs"),
            negatives=Side("euclidean", affine=Affine(-1.0, 0.6)),
            reducer=Reducer("mean", over="positive_pairs"),
            zero_without_both_pair_kinds=True,
        )

    import dataclasses

    squared = presets.contrastive(0.1, 1.5)
    squared = dataclasses.replace(
        squared,
        positives=dataclasses.replace(squared.positives, measure="squared_euclidean"),
        negatives=dataclasses.replace(squared.negatives, measure="squared_euclidean"),
    )
    dot = presets.multi_similarity(mining_epsilon=0.2)
    dot = dataclasses.replace(
        dot,
        positives=dataclasses.replace(dot.positives, measure="dot", normalize=False),
        negatives=dataclasses.replace(dot.negatives, measure="dot", normalize=False),
    )
    return [
        ("supcon", presets.supcon(0.1)),
        ("multi-similarity", presets.multi_similarity(mining_epsilon=None)),
        ("multi-similarity mined", presets.multi_similarity()),
        ("circle", presets.circle()),
        ("contrastive", presets.contrastive(0.05, 0.9)),
        ("ntxent", presets.ntxent(0.2)),
        ("generalized lifted", presets.generalized_lifted_structure(1.2, 0.1)),
        ("tuplet margin", presets.tuplet_margin(5.73, 16.0)),
        ("lifted", lifted()),
        ("contrastive squared", squared),
        ("multi-similarity dot mined", dot),
    ]


def _samples(dtype):
    rules = _sample_rules()
    for regime, x, y in labelled_batches(dtype):
        for name, rule in rules:
            encoded = encode(rule)
            euclidean = rule.positives.measure in ("euclidean", "squared_euclidean")
            duplicates = "duplicate" in regime
            # Distances of duplicate rows are square roots of a rounding, and an angle offset's acos
            # of a rounded 1.0000001 is NaN; their float32 values are not the float64 ones'.
            yield Sample(
                (x, y, list(encoded.params), list(encoded.codes)),
                f"{regime}, {name}",
                float32_matches_float64=not (duplicates and (euclidean or rule.positives.angle_offset != 0)),
                gradcheck=not (duplicates or name in ("circle",)),
            )


def reduce_terms(rule: PairRule, embeddings: torch.Tensor, outputs) -> torch.Tensor:
    """The batch loss of the op's outputs, by ``rule.reducer`` (see :func:`reduce_pair_rule`)."""
    return reduce_pair_rule(rule, embeddings, PairRuleTerms(*outputs[:5]))


def _reduce(inputs, outputs):
    embeddings, _, params, codes = inputs[:4]
    return reduce_terms(decode(params, codes), embeddings, outputs)


PAIR_RULE = layer.declare(OpSpec(
    name="pair_rule_forward",
    args=(Embeddings("embeddings"), Labels(), EncodedParams("params"), EncodedCodes("codes")),
    reference=_reference,
    fake=_forward_fake,
    outputs=5,
    autograd=Autograd(_setup_context, _backward, "_pair_rule_backward", _backward_fake),
    compute_grad_at=4,
    reduce=_reduce,
    samples=_samples,
    validate=_validate,
    reference_when=_needs_reference,
))


def pair_rule_forward(embeddings: torch.Tensor, labels: torch.Tensor, rule: PairRule) -> PairRuleTerms:
    """Runs ``rule`` on a batch: the per-anchor term sums and counts the batch reducer takes.

    The fused kernel runs it, except for a distance rule's batch of at most 25 rows, or of at most
    2,048 rows holding two rows whose distance is mostly rounding: those take the pure-torch
    interpreter, whose torch.cdist is what pytorch-metric-learning computes there.

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
    if not isinstance(rule, PairRule):
        raise TypeError(f"{CALLER}: rule must be an embedplug.pair_rules.PairRule, got {type(rule).__name__}")
    check_embeddings(embeddings, CALLER)
    labels = check_labels(labels, embeddings, CALLER)
    encoded = encode(rule)
    return PairRuleTerms(*layer.call(PAIR_RULE, embeddings, labels, list(encoded.params), list(encoded.codes)))


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
    # A rule with avg_non_zero makes every count known (checked when it is built); this guards raw
    # outputs, in eager mode (a data-dependent branch under torch.compile).
    if kind == "avg_non_zero" and not torch.compiler.is_compiling() and bool((counted < 0).any()):
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
    """``{"implementation": "fused"|"reference", "reason": ...}`` of the pair-rule op on ``device_type``."""
    return layer.backend(PAIR_RULE, device_type)


__all__ = ["DISTANCE_NOTE", "PAIR_RULE", "PairRuleError", "backend", "pair_rule_forward", "reduce_pair_rule"]
