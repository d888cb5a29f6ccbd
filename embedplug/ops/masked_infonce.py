"""``embedplug::masked_infonce``: registration and dispatch."""

from __future__ import annotations

import torch

from embedplug import _extension
from embedplug.reference import masked_infonce as reference

OP_NAME = "masked_infonce"
_extension.REPORTED_OPS.append(OP_NAME)

_FUSED_DEVICE_TYPES = frozenset(d for d in ("cpu", "cuda") if _extension.has_kernel(OP_NAME, d))

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
        grad_anchors, grad_candidates = torch.ops.embedplug._masked_infonce_backward(
            grad_loss, anchors, candidates, guide_anchors, guide_candidates, log_normalizer, *ctx.options
        )
        # Guide similarities only select entries: no gradient reaches the guide.
        return (grad_anchors, grad_candidates, None, None) + (None,) * len(ctx.options)

    torch.library.register_autograd("embedplug::masked_infonce", _backward, setup_context=_setup_context)


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
    if anchors.dtype in (torch.float16, torch.bfloat16):
        anchors, candidates = anchors.float(), candidates.float()
    if guide_anchors is not None:
        guide_anchors, guide_candidates = guide_anchors.to(anchors.dtype), guide_candidates.to(anchors.dtype)
    arguments = (
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
    if anchors.device.type in _FUSED_DEVICE_TYPES:
        return torch.ops.embedplug.masked_infonce(*arguments)
    return reference.masked_infonce(*arguments)


def fused_backend_info(device_type: str) -> dict:
    """``{"implementation": "fused"|"reference", "reason": ...}`` for this op on ``device_type``."""
    return _extension._op_backend(OP_NAME, device_type)
