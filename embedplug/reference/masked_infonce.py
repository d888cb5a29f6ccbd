"""Reference masked in-batch softmax cross-entropy: the semantics of ``embedplug::masked_infonce`` on
materialised similarity blocks (the fallback, and the oracle the fused kernel is tested against)."""

from __future__ import annotations

import torch

MARGIN_STRATEGIES = ("none", "absolute", "relative")


def _exact_similarity(rows: torch.Tensor, columns: torch.Tensor, row_index: torch.Tensor, column_index: torch.Tensor):
    """<rows[r], columns[c]> for index pairs, as an elementwise product summed in a fixed order.

    Symmetric and deterministic, so identical vectors give identical values whichever block they
    sit in; ``rows @ columns.T`` from two different GEMM calls need not.
    """
    return (rows[row_index] * columns[column_index]).sum(-1)


def guide_keep_mask(
    guide_rows: torch.Tensor, guide_columns: torch.Tensor, threshold: torch.Tensor
) -> torch.Tensor:
    """[R, C] bool: guide similarity <= threshold (strict > drops), deciding near ties exactly.

    The GEMM value decides where it is further than its rounding bound from the threshold; the
    remaining entries are recomputed with :func:`_exact_similarity`, as the thresholds are.
    """
    similarity = guide_rows @ guide_columns.t()
    dim = guide_rows.shape[1]
    tolerance = 2 * dim * torch.finfo(guide_rows.dtype).eps
    band = tolerance * guide_rows.norm(dim=1, keepdim=True) * guide_columns.norm(dim=1).unsqueeze(0)
    threshold = threshold.unsqueeze(1)
    keep = similarity <= threshold - band
    near = ~keep & (similarity <= threshold + band)
    if near.any():
        row_index, column_index = near.nonzero(as_tuple=True)
        exact = _exact_similarity(guide_rows, guide_columns, row_index, column_index)
        keep[row_index, column_index] = ~(exact > threshold[row_index, 0])
    return keep


def guide_thresholds(guide_anchors: torch.Tensor, guide_positives: torch.Tensor, margin_strategy: str, margin: float):
    """[N] thresholds: t_i - margin (absolute) or t_i - |t_i| * margin (relative), t_i = <ga_i, gp_i>."""
    index = torch.arange(guide_anchors.shape[0], device=guide_anchors.device)
    target = _exact_similarity(guide_anchors, guide_positives, index, index)
    if margin_strategy == "absolute":
        return target - margin
    return target - target.abs() * margin


def masked_infonce(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    guide_anchors: torch.Tensor | None,
    guide_candidates: torch.Tensor | None,
    scale: float,
    margin_strategy: str,
    margin: float,
    anchor_anchor: bool,
    positive_anchor: bool,
    positive_candidate_columns: int,
    exclude_self: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference for ``embedplug::masked_infonce``: ([N, D], [M, D], ...) -> (loss [N], lse [N]).

    Row i's logits are ``scale * <a_i, candidates>``, then optionally ``<a_i, anchors>``,
    ``<p_i, anchors>`` and ``<p_i, candidates[:K]>`` (p_i = candidates[i]); entries dropped by
    ``exclude_self`` or by the guide are -inf. ``loss_i = lse_i - scale * <a_i, p_i>``.
    """
    if margin_strategy not in MARGIN_STRATEGIES:
        raise ValueError(f"unknown margin_strategy {margin_strategy!r}; expected one of {MARGIN_STRATEGIES}")
    n = anchors.shape[0]
    positives = candidates[:n]
    rows = torch.arange(n, device=anchors.device)
    guided = margin_strategy != "none"
    if guided and guide_anchors is None:
        guide_anchors, guide_candidates = anchors.detach(), candidates.detach()
    if guided:
        guide_anchors, guide_candidates = guide_anchors.detach(), guide_candidates.detach()
        threshold = guide_thresholds(guide_anchors, guide_candidates[:n], margin_strategy, margin)

    # (student rows, student columns, guide rows, guide columns, target column, self columns)
    blocks = [(anchors, candidates, guide_anchors, guide_candidates, True, None)]
    if anchor_anchor:
        blocks.append((anchors, anchors, guide_anchors, guide_anchors, False, "anchors"))
    if positive_anchor:
        blocks.append((positives, anchors, guide_candidates[:n] if guided else None, guide_anchors, True, None))
    if positive_candidate_columns > 0:
        k = positive_candidate_columns
        blocks.append(
            (positives, candidates[:k], guide_candidates[:n] if guided else None,
             guide_candidates[:k] if guided else None, False, "candidates")
        )

    logits = []
    for student_rows, student_columns, guide_rows, guide_columns, has_target, self_columns in blocks:
        block = scale * (student_rows @ student_columns.t())
        keep = torch.ones_like(block, dtype=torch.bool)
        if exclude_self and self_columns is not None:
            columns = torch.arange(block.shape[1], device=block.device)
            modulus = n if self_columns == "candidates" else block.shape[1]
            keep &= (columns.unsqueeze(0) % modulus) != rows.unsqueeze(1)
        if guided:
            guide_keep = guide_keep_mask(guide_rows, guide_columns, threshold)
            if has_target:
                guide_keep[rows, rows] = True
            keep &= guide_keep
        logits.append(block.masked_fill(~keep, float("-inf")))
    logits = torch.cat(logits, dim=1)
    log_normalizer = torch.logsumexp(logits, dim=1)
    return log_normalizer - logits[rows, rows], log_normalizer
