"""Reference masked in-batch softmax cross-entropy: the semantics of ``embedplug::masked_infonce`` and
``embedplug::masked_infonce_mean`` on materialised similarity blocks (the fallback, and the oracle the
fused kernels are tested against)."""

from __future__ import annotations

import math

import torch

MARGIN_STRATEGIES = ("none", "absolute", "relative")
PARTITION_MODES = ("joint", "per_direction")
HARDNESS_MODES = ("none", "in_batch_negatives", "hard_negatives", "all_negatives")


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
    # Written as drop tests, as sentence-transformers compares (guide_sim > threshold drops): a NaN
    # guide similarity or threshold then drops nothing, on both sides of the band.
    drop = similarity > threshold + band
    near = ~drop & (similarity > threshold - band)
    keep = ~drop
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


def masked_logit_blocks(
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
    hardness_mode: str = "none",
    hardness_strength: float = 0.0,
) -> list[torch.Tensor]:
    """Row i's softmax blocks, each [N, C_b]: ``scale * <a_i, candidates>`` (query-to-doc), then
    optionally ``<a_i, anchors>``, ``<p_i, anchors>`` and ``<p_i, candidates[:K]>`` (p_i = candidates[i]),
    dropped entries -inf. With ``hardness_mode`` the query-to-doc entries it selects get
    ``+ hardness_strength * stop_grad(<a_i, c_j>)``."""
    if margin_strategy not in MARGIN_STRATEGIES:
        raise ValueError(f"unknown margin_strategy {margin_strategy!r}; expected one of {MARGIN_STRATEGIES}")
    if hardness_mode not in HARDNESS_MODES:
        raise ValueError(f"unknown hardness_mode {hardness_mode!r}; expected one of {HARDNESS_MODES}")
    if not (math.isfinite(hardness_strength) and hardness_strength >= 0):
        raise ValueError(f"hardness_strength must be a finite non-negative number, got {hardness_strength}")
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
    for index, (student_rows, student_columns, guide_rows, guide_columns, has_target, self_columns) in enumerate(blocks):
        similarity = student_rows @ student_columns.t()
        block = scale * similarity
        if index == 0 and hardness_mode != "none" and hardness_strength > 0:
            weighted = hardness_mask(hardness_mode, n, block.shape[1], block.device)
            block = torch.where(weighted, block + hardness_strength * similarity.detach(), block)
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
    return logits


def hardness_mask(hardness_mode: str, n: int, num_columns: int, device=None) -> torch.Tensor:
    """[N, M] bool: the query-to-doc entries (row i, candidate j) that ``hardness_mode`` weights.

    Candidate j is one of row i's own documents when j mod N == i (its positive for j < N, a hard
    negative after): "in_batch_negatives" weights the others, "hard_negatives" the own hard
    negatives, "all_negatives" everything but the positive.
    """
    rows = torch.arange(n, device=device).unsqueeze(1)
    columns = torch.arange(num_columns, device=device).unsqueeze(0)
    own_document = columns % n == rows
    positive_column = columns < n
    if hardness_mode == "in_batch_negatives":
        return ~own_document
    if hardness_mode == "hard_negatives":
        return own_document & ~positive_column
    return ~(own_document & positive_column)


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

    Row i's logits are :func:`masked_logit_blocks` side by side, one softmax over them;
    ``loss_i = lse_i - scale * <a_i, p_i>``.
    """
    logits = torch.cat(
        masked_logit_blocks(
            anchors, candidates, guide_anchors, guide_candidates, scale, margin_strategy, margin, anchor_anchor,
            positive_anchor, positive_candidate_columns, exclude_self,
        ),
        dim=1,
    )
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    log_normalizer = torch.logsumexp(logits, dim=1)
    return log_normalizer - logits[rows, rows], log_normalizer


def masked_infonce_mean(
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
    partition_mode: str = "joint",
    hardness_mode: str = "none",
    hardness_strength: float = 0.0,
) -> torch.Tensor:
    """Reference for ``embedplug::masked_infonce_mean`` (without ``compute_grad``): the scalar
    ``mean_i(log_normalizer_i - target_logit_i)``.

    ``partition_mode`` "joint" takes one softmax over a row's blocks (``masked_infonce(...)[0].mean()``
    with the hardness term); "per_direction" one per block, the log-normaliser the mean of the
    blocks' log-sum-exps (sentence-transformers' ``partition_mode="per_direction"``).
    """
    if partition_mode not in PARTITION_MODES:
        raise ValueError(f"unknown partition_mode {partition_mode!r}; expected one of {PARTITION_MODES}")
    blocks = masked_logit_blocks(
        anchors, candidates, guide_anchors, guide_candidates, scale, margin_strategy, margin, anchor_anchor,
        positive_anchor, positive_candidate_columns, exclude_self, hardness_mode, hardness_strength,
    )
    rows = torch.arange(anchors.shape[0], device=anchors.device)
    target_logit = blocks[0][rows, rows]
    if partition_mode == "joint":
        log_normalizer = torch.logsumexp(torch.cat(blocks, dim=1), dim=1)
    else:
        log_normalizer = sum(torch.logsumexp(block, dim=1) for block in blocks) / len(blocks)
    return (log_normalizer - target_logit).mean()
