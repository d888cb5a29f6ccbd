"""``embedplug::masked_infonce``: registration and dispatch."""

from __future__ import annotations

import torch

from embedplug import _extension
from embedplug._validation import check_finite_number, check_finite_rows, check_positive_number, check_same_device
from embedplug.reference import masked_infonce as reference

OP_NAME = "masked_infonce"
MEAN_OP_NAME = "masked_infonce_mean"
_extension.REPORTED_OPS.extend([OP_NAME, MEAN_OP_NAME])

_FUSED_DEVICE_TYPES = frozenset(d for d in ("cpu", "cuda") if _extension.has_kernel(OP_NAME, d))
_FUSED_MEAN_DEVICE_TYPES = frozenset(d for d in ("cpu", "cuda") if _extension.has_kernel(MEAN_OP_NAME, d))

if _extension.STATUS.loaded:

    @torch.library.register_fake("embedplug::masked_infonce")
    def _masked_infonce_fake(anchors, candidates, guide_anchors, guide_candidates, *options):
        n = anchors.shape[0]
        return anchors.new_empty((n,)), anchors.new_empty((n,))

    @torch.library.register_fake("embedplug::_masked_infonce_backward")
    def _masked_infonce_backward_fake(grad_loss, anchors, candidates, *rest):
        return torch.empty_like(anchors), torch.empty_like(candidates)

    def _setup_context(ctx, inputs, output):
        anchors, candidates, guide_anchors, guide_candidates, *options = inputs
        _loss, log_normalizer = output
        ctx.save_for_backward(anchors, candidates, guide_anchors, guide_candidates, log_normalizer)
        ctx.options = options
        ctx.mark_non_differentiable(log_normalizer)

    def _backward(ctx, grad_loss, _grad_log_normalizer):
        anchors, candidates, guide_anchors, guide_candidates, log_normalizer = ctx.saved_tensors
        if torch.is_grad_enabled():
            # The recomputing kernel is not differentiable; a second derivative would silently be 0.
            raise RuntimeError(
                "embedplug::masked_infonce does not support double backward (create_graph=True); "
                "run the pure-torch reference (EMBEDPLUG_DISABLE_EXT=1) for higher-order gradients"
            )
        grad_anchors, grad_candidates = torch.ops.embedplug._masked_infonce_backward(
            grad_loss, anchors, candidates, guide_anchors, guide_candidates, log_normalizer, *ctx.options
        )
        # Guide similarities only select entries: no gradient reaches the guide.
        return (grad_anchors, grad_candidates, None, None) + (None,) * len(ctx.options)

    torch.library.register_autograd("embedplug::masked_infonce", _backward, setup_context=_setup_context)

    # Position of compute_grad among the mean op's arguments (the MNRL options follow it, with defaults).
    _MEAN_COMPUTE_GRAD = 11

    @torch.library.register_fake("embedplug::masked_infonce_mean")
    def _masked_infonce_mean_fake(anchors, candidates, guide_anchors, guide_candidates, *options):
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
        if torch.is_grad_enabled():
            # The saved gradient is a constant here; a second derivative would silently be wrong.
            raise RuntimeError("embedplug::masked_infonce_mean does not support double backward (create_graph=True)")
        grad_anchors, grad_candidates = ctx.saved_tensors
        # One entry per argument the dispatcher passed (defaulted trailing ones may be absent).
        return (grad_loss * grad_anchors, grad_loss * grad_candidates) + (None,) * (len(ctx.needs_input_grad) - 2)

    torch.library.register_autograd(
        "embedplug::masked_infonce_mean", _mean_backward, setup_context=_setup_mean_context
    )


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
    arguments = _arguments(
        anchors, candidates, guide_anchors, guide_candidates, scale, margin_strategy, margin, anchor_anchor,
        positive_anchor, positive_candidate_columns, exclude_self,
    )
    if arguments[0].device.type in _FUSED_DEVICE_TYPES:
        return torch.ops.embedplug.masked_infonce(*arguments)
    return reference.masked_infonce(*arguments)


def _arguments(
    anchors, candidates, guide_anchors, guide_candidates, scale, margin_strategy, margin, anchor_anchor,
    positive_anchor, positive_candidate_columns, exclude_self,
) -> tuple:
    """The op's positional arguments, checked; half precision runs in float32 (autograd casts the gradient back)."""
    caller = "embedplug.ops.masked_infonce"
    check_same_device(
        caller, anchors=anchors, candidates=candidates, guide_anchors=guide_anchors, guide_candidates=guide_candidates
    )
    scale = check_positive_number(scale, "scale", caller)
    margin = check_finite_number(margin, "margin", caller)
    if guide_anchors is not None and guide_candidates is not None:
        if (
            guide_anchors.dim() != 2 or guide_candidates.dim() != 2
            or guide_anchors.shape[0] != anchors.shape[0] or guide_candidates.shape[0] != candidates.shape[0]
            or guide_anchors.shape[1] != guide_candidates.shape[1]
        ):
            raise ValueError(
                f"{caller}: guide_anchors and guide_candidates must be [N, Dg] and [M, Dg] with the student's rows "
                f"(N = {anchors.shape[0]}, M = {candidates.shape[0]}), got {tuple(guide_anchors.shape)} and "
                f"{tuple(guide_candidates.shape)}"
            )
        check_finite_rows(caller, guide_anchors=guide_anchors, guide_candidates=guide_candidates)
    if anchors.dtype in (torch.float16, torch.bfloat16):
        anchors, candidates = anchors.float(), candidates.float()
    if guide_anchors is not None:
        guide_anchors, guide_candidates = guide_anchors.to(anchors.dtype), guide_candidates.to(anchors.dtype)
    return (
        anchors,
        candidates,
        guide_anchors,
        guide_candidates,
        float(scale),
        margin_strategy,
        float(margin),
        bool(anchor_anchor),
        bool(positive_anchor),
        int(positive_candidate_columns),
        bool(exclude_self),
    )


def fused_backend_info(device_type: str) -> dict:
    """``{"implementation": "fused"|"reference", "reason": ...}`` of the mean op the losses call, on ``device_type``."""
    return _extension._op_backend(MEAN_OP_NAME, device_type)


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

    The fused kernel computes d mean / d inputs while the
    softmax strips are at hand (3 GEMMs per student block instead of 4, guide blocks once instead of
    twice) when ``anchors`` or ``candidates`` requires grad under grad mode; backward then only scales
    the saved gradients. Double backward is not supported.

    Returns:
        Scalar mean loss, differentiable w.r.t. anchors and candidates.
    """
    arguments = _arguments(
        anchors, candidates, guide_anchors, guide_candidates, scale, margin_strategy, margin, anchor_anchor,
        positive_anchor, positive_candidate_columns, exclude_self,
    )
    mnrl_options = (partition_mode, "none" if hardness_mode is None else hardness_mode, float(hardness_strength))
    if arguments[0].device.type in _FUSED_MEAN_DEVICE_TYPES:
        compute_grad = torch.is_grad_enabled() and (anchors.requires_grad or candidates.requires_grad)
        loss, _, _ = torch.ops.embedplug.masked_infonce_mean(*arguments, compute_grad, *mnrl_options)
        return loss
    return reference.masked_infonce_mean(*arguments, *mnrl_options)
