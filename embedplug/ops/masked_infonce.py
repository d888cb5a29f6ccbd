"""``embedplug::masked_infonce`` and ``masked_infonce_mean``: the masked in-batch softmax cross-entropy
of GISTEmbedLoss (guide-filtered) and MultipleNegativesRankingLoss (unguided), fused with the GEMMs."""

from __future__ import annotations

import torch

from embedplug._validation import check_finite_rows
from embedplug.ops import layer
from embedplug.ops.samples import paired_batches, unit_rows
from embedplug.ops.spec import Autograd, Choice, Count, Embeddings, Flag, OpSpec, Real, Sample
from embedplug.reference import masked_infonce as reference
from embedplug.reference.masked_infonce import HARDNESS_MODES, MARGIN_STRATEGIES, PARTITION_MODES
from embedplug.reference.masked_infonce import guide_thresholds  # noqa: F401  (the gathered GIST path)
from embedplug.reference.multiple_negatives_ranking import multiple_negatives_ranking_loss  # noqa: F401

# Position of compute_grad among the mean op's schema arguments (the MNRL options follow it).
_MEAN_COMPUTE_GRAD = 11

_COMMON_ARGS = (
    Embeddings("anchors"),
    Embeddings("candidates", same_dim_as="anchors"),
    Embeddings("guide_anchors", same_rows_as="anchors", optional=True, differentiable=False),
    Embeddings("guide_candidates", same_rows_as="candidates", same_dim_as="guide_anchors", optional=True,
               differentiable=False),
    Real("scale", positive=True),
    Choice("margin_strategy", MARGIN_STRATEGIES),
    Real("margin"),
    Flag("anchor_anchor"),
    Flag("positive_anchor"),
    Count("positive_candidate_columns"),
    Flag("exclude_self"),
)


def _validate(args: tuple, caller: str) -> None:
    anchors, candidates, guide_anchors, guide_candidates = args[:4]
    n, m = anchors.shape[0], candidates.shape[0]
    if m < n or m % n:
        raise ValueError(
            f"{caller}: candidates must be the N = {n} positives followed by whole columns of N negatives "
            f"(M a multiple of N), got M = {m}"
        )
    if (guide_anchors is None) != (guide_candidates is None):
        raise ValueError(f"{caller}: pass both guide_anchors and guide_candidates, or neither")
    if guide_anchors is not None and args[5] == "none":
        raise ValueError(f"{caller}: guide embeddings given but margin_strategy is 'none'; a guide only filters with a margin")
    if args[9] > m:
        raise ValueError(f"{caller}: positive_candidate_columns must be <= M = {m}, got {args[9]}")
    check_finite_rows(caller, guide_anchors=guide_anchors, guide_candidates=guide_candidates)


def _fake(anchors, candidates, guide_anchors, guide_candidates, *options):
    n = anchors.shape[0]
    return anchors.new_empty((n,)), anchors.new_empty((n,))


def _backward_fake(grad_loss, anchors, candidates, *rest):
    return torch.empty_like(anchors), torch.empty_like(candidates)


def _setup_context(ctx, inputs, output):
    anchors, candidates, guide_anchors, guide_candidates, *options = inputs
    _loss, log_normalizer = output
    ctx.save_for_backward(anchors, candidates, guide_anchors, guide_candidates, log_normalizer)
    ctx.options = options
    ctx.mark_non_differentiable(log_normalizer)


def _backward(ctx, grad_loss, _grad_log_normalizer):
    anchors, candidates, guide_anchors, guide_candidates, log_normalizer = ctx.saved_tensors
    grad_anchors, grad_candidates = torch.ops.embedplug._masked_infonce_backward(
        grad_loss, anchors, candidates, guide_anchors, guide_candidates, log_normalizer, *ctx.options
    )
    # Guide similarities only select entries: no gradient reaches the guide.
    return (grad_anchors, grad_candidates, None, None) + (None,) * len(ctx.options)


def _mean_fake(anchors, candidates, guide_anchors, guide_candidates, *options):
    # The dispatcher drops trailing arguments equal to their defaults: index from the front.
    compute_grad = options[_MEAN_COMPUTE_GRAD - 4]
    rows_anchors, rows_candidates = (anchors.shape[0], candidates.shape[0]) if compute_grad else (0, 0)
    return (
        anchors.new_empty(()),
        anchors.new_empty((rows_anchors, anchors.shape[1])),
        candidates.new_empty((rows_candidates, candidates.shape[1])),
    )


def _setup_mean_context(ctx, inputs, output):
    _loss, grad_anchors, grad_candidates = output
    ctx.compute_grad = inputs[_MEAN_COMPUTE_GRAD]
    ctx.save_for_backward(grad_anchors, grad_candidates)
    ctx.mark_non_differentiable(grad_anchors, grad_candidates)


def _mean_backward(ctx, grad_loss, _grad_anchors, _grad_candidates):
    if not ctx.compute_grad:
        raise RuntimeError(
            "embedplug::masked_infonce_mean was called with compute_grad=False, so it has no gradient; "
            "call embedplug.ops.masked_infonce_mean, which sets it when an input requires grad"
        )
    grad_anchors, grad_candidates = ctx.saved_tensors
    # One entry per argument the dispatcher passed (defaulted trailing ones may be absent).
    return (grad_loss * grad_anchors, grad_loss * grad_candidates) + (None,) * (len(ctx.needs_input_grad) - 2)


def _option_sets():
    """(regime suffix, options after the four tensors) covering GIST's and MNRL's configurations."""
    yield "unguided", (20.0, "none", 0.0, False, False, 0, True)
    yield "all blocks, scale 100", (100.0, "none", 0.0, True, True, 8, True)
    yield "absolute margin", (20.0, "absolute", 0.1, True, True, 8, True)
    yield "relative margin, self kept", (20.0, "relative", 0.05, True, False, 0, False)


def _with_guides(dtype, guided: bool):
    for regime, anchors, candidates in paired_batches(dtype):
        anchors, candidates = unit_rows(anchors), unit_rows(candidates)
        guides = (unit_rows(anchors[:, :4] + 0.1), unit_rows(candidates[:, :4] + 0.1)) if guided else (None, None)
        yield regime, anchors, candidates, guides


def _samples(dtype):
    for guided in (False, True):
        for regime, anchors, candidates, guides in _with_guides(dtype, guided):
            for suffix, options in _option_sets():
                if guided and options[1] == "none":
                    continue
                pcc = min(options[5], candidates.shape[0])
                options = options[:5] + (pcc,) + options[6:]
                # Guide thresholds compare computed similarities: float32 may keep what float64 drops.
                yield Sample((anchors, candidates, *guides, *options), f"{regime}, {suffix}, guided={guided}",
                             float32_matches_float64=options[1] == "none")


def _mean_samples(dtype):
    for sample in _samples(dtype):
        yield Sample(sample.args + ("joint", "none", 0.0), sample.regime, sample.float32_matches_float64)
    for regime, anchors, candidates, guides in _with_guides(dtype, False):
        for partition, hardness, strength in (("per_direction", "none", 0.0), ("joint", "all_negatives", 3.0),
                                              ("joint", "in_batch_negatives", 1.0), ("joint", "hard_negatives", 2.0)):
            options = (20.0, "none", 0.0, False, True, 0, True, partition, hardness, strength)
            yield Sample((anchors, candidates, *guides, *options), f"{regime}, {partition}, {hardness}",
                         gradcheck=hardness == "none")


MASKED_INFONCE = layer.declare(OpSpec(
    name="masked_infonce",
    args=_COMMON_ARGS,
    reference=reference.masked_infonce,
    fake=_fake,
    outputs=2,
    autograd=Autograd(_setup_context, _backward, "_masked_infonce_backward", _backward_fake),
    validate=_validate,
    reduce=lambda inputs, outputs: outputs[0].mean(),
    samples=_samples,
))

MASKED_INFONCE_MEAN = layer.declare(OpSpec(
    name="masked_infonce_mean",
    args=_COMMON_ARGS + (
        Choice("partition_mode", PARTITION_MODES),
        Choice("hardness_mode", HARDNESS_MODES, aliases={None: "none"}),
        Real("hardness_strength", non_negative=True),
    ),
    reference=reference.masked_infonce_mean,
    fake=_mean_fake,
    outputs=1,
    autograd=Autograd(_setup_mean_context, _mean_backward),
    compute_grad_at=_MEAN_COMPUTE_GRAD,
    validate=_validate,
    reduce=lambda inputs, outputs: outputs[0],
    samples=_mean_samples,
))


def masked_infonce(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    guide_anchors: torch.Tensor | None = None,
    guide_candidates: torch.Tensor | None = None,
    *,
    scale: float,
    margin_strategy: str = "none",
    margin: float = 0.0,
    anchor_anchor: bool = False,
    positive_anchor: bool = False,
    positive_candidate_columns: int = 0,
    exclude_self: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row masked in-batch softmax cross-entropy, fused with the similarity GEMMs.

    Args:
        anchors: [N, D] (unit rows for cosine similarity; the op works on dot products).
        candidates: [M, D], the N positives followed by whole columns of N negatives (M = k N).
        guide_anchors, guide_candidates: [N, Dg], [M, Dg] guide embeddings (both or neither); they
            only select entries and get no gradient. With ``margin_strategy`` set and no guide,
            the student's own similarities guide (self-guided filtering).
        scale: logits are ``scale * similarity`` (1 / temperature).
        margin_strategy: "none", "absolute" (drop guide_sim > t_i - margin) or "relative"
            (drop guide_sim > t_i - |t_i| margin), t_i = guide_sim(a_i, p_i); the pair
            (a_i, p_i) is never dropped.
        anchor_anchor, positive_anchor: add the <a_i, anchors> / <p_i, anchors> blocks.
        positive_candidate_columns: K > 0 adds the <p_i, candidates[:K]> block.
        exclude_self: drop a row's own columns from the anchor-anchor (j == i) and
            positive-candidate (j == i mod N) blocks.

    Returns:
        loss: [N] float32/float64, ``lse_i - scale * <a_i, p_i>``; differentiable w.r.t. anchors
            and candidates.
        log_normalizer: [N] the per-row log-sum-exp (non-differentiable).
    """
    return layer.call(
        MASKED_INFONCE, anchors, candidates, guide_anchors, guide_candidates, scale, margin_strategy, margin,
        anchor_anchor, positive_anchor, positive_candidate_columns, exclude_self,
    )


def fused_backend_info(device_type: str) -> dict:
    """``{"implementation": "fused"|"reference", "reason": ...}`` of the mean op the losses call, on ``device_type``."""
    return layer.backend(MASKED_INFONCE_MEAN, device_type)


def masked_infonce_mean(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    guide_anchors: torch.Tensor | None = None,
    guide_candidates: torch.Tensor | None = None,
    *,
    scale: float,
    margin_strategy: str = "none",
    margin: float = 0.0,
    anchor_anchor: bool = False,
    positive_anchor: bool = False,
    positive_candidate_columns: int = 0,
    exclude_self: bool = True,
    partition_mode: str = "joint",
    hardness_mode: str | None = "none",
    hardness_strength: float = 0.0,
) -> torch.Tensor:
    """``masked_infonce(...)[0].mean()`` in one fused pass that also computes its gradient, with
    MultipleNegativesRankingLoss's partition and hardness options.

    Same arguments as :func:`masked_infonce`, and:
        partition_mode: "joint" (one softmax over a row's blocks) or "per_direction" (one softmax
            per block: query-to-doc, anchor-anchor, positive-anchor, positive-candidate; the row's
            log-normaliser is the mean of theirs).
        hardness_mode: "none" (or None), "in_batch_negatives" (candidates of other rows),
            "hard_negatives" (the row's own candidates past the first N) or "all_negatives"
            (every candidate but the positive): those query-to-doc logits get
            ``+ hardness_strength * stop_grad(<a_i, c_j>)``.
        hardness_strength: >= 0; 0 turns the weighting off.

    The fused kernel computes d mean / d inputs while the softmax strips are at hand when
    ``anchors`` or ``candidates`` requires grad under grad mode; backward then only scales the
    saved gradients. Double backward is not supported.

    Returns:
        Scalar mean loss, differentiable w.r.t. anchors and candidates.
    """
    (loss,) = layer.call(
        MASKED_INFONCE_MEAN, anchors, candidates, guide_anchors, guide_candidates, scale, margin_strategy, margin,
        anchor_anchor, positive_anchor, positive_candidate_columns, exclude_self, partition_mode, hardness_mode,
        hardness_strength,
    )
    return loss
