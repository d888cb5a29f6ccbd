"""In-batch-negative contrastive losses on raw embeddings: GISTEmbed and MultipleNegativesRanking.

Both run on ``embedplug::masked_infonce_mean``: cosine normalisation happens here in differentiable
torch (O(N D)), the op works on dot products and never materialises an N x N matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from embedplug._validation import check_embeddings
from embedplug.ops import masked_infonce_mean
from embedplug.reference.multiple_negatives_ranking import multiple_negatives_ranking_loss as reference_mnrl

# nn.CosineSimilarity's eps, which GISTEmbedLoss uses: x.y / (max(|x|, eps) max(|y|, eps)).
COSINE_SIMILARITY_EPS = 1e-8
MARGIN_STRATEGIES = ("absolute", "relative")
DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
PARTITION_MODES = ("joint", "per_direction")
HARDNESS_MODES = (None, "in_batch_negatives", "hard_negatives", "all_negatives")


def _unit_rows(embeddings: torch.Tensor, eps: float) -> torch.Tensor:
    return embeddings / embeddings.norm(dim=-1, keepdim=True).clamp_min(eps)


def _check_columns(caller: str, anchor: torch.Tensor, columns: Sequence[torch.Tensor], rows: int | None = None) -> None:
    check_embeddings(anchor, caller)
    for column in columns:
        check_embeddings(column, caller)
        if column.shape[1] != anchor.shape[1] or (rows is not None and column.shape[0] != rows):
            raise ValueError(
                f"{caller}: every column must be [{rows if rows is not None else 'N'}, {anchor.shape[1]}] like the "
                f"anchors, got {tuple(column.shape)}"
            )
        if column.device != anchor.device:
            raise ValueError(f"{caller}: all embeddings must be on one device")


def gist_embed_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: Sequence[torch.Tensor] = (),
    *,
    guide_anchor: torch.Tensor | None = None,
    guide_positive: torch.Tensor | None = None,
    guide_negatives: Sequence[torch.Tensor] = (),
    temperature: float = 0.01,
    margin_strategy: str = "absolute",
    margin: float = 0.0,
    contrast_anchors: bool = True,
    contrast_positives: bool = True,
    offset: int = 0,
) -> torch.Tensor:
    """GISTEmbed loss (Solatorio 2024): in-batch InfoNCE with guide-filtered false negatives.

    Args:
        anchor: [B, D] student anchors (this device's rows).
        positive: [P, D] student positives; P = B, or P = world_size * B after an all-gather with
            this device's positives at ``offset : offset + B``.
        negatives: any number of [P, D] student negative columns.
        guide_anchor, guide_positive, guide_negatives: the guide model's embeddings of the same
            texts ([B, Dg], [P, Dg], [P, Dg] each), or None for self-guided filtering, where the
            student's own detached similarities act as the guide (no second model).
        temperature: logits are cosine / temperature.
        margin_strategy, margin: a candidate is dropped when its guide similarity to the row
            exceeds ``t - margin`` ("absolute") or ``t - |t| margin`` ("relative"), t the guide
            similarity of (anchor, its positive); the positive itself is never dropped.
        contrast_anchors, contrast_positives: add the anchor-anchor and positive-positive blocks.

    Returns:
        Scalar mean cross-entropy, equal to sentence-transformers' ``GISTEmbedLoss``.
    """
    caller = "gist_embed_loss"
    negatives = list(negatives)
    _check_columns(caller, anchor, [positive, *negatives])
    batch_size, world_rows = anchor.shape[0], positive.shape[0]
    if world_rows % batch_size or not 0 <= offset <= world_rows - batch_size or offset % batch_size:
        raise ValueError(f"{caller}: positives ({world_rows} rows) must hold the {batch_size} local rows at offset {offset}")
    if any(negative.shape[0] != world_rows for negative in negatives):
        raise ValueError(f"{caller}: every negative column must have as many rows as the positives ({world_rows})")
    if margin_strategy not in MARGIN_STRATEGIES:
        raise ValueError(f"{caller}: margin_strategy must be 'absolute' or 'relative', got {margin_strategy!r}")
    guided = guide_anchor is not None
    if guided != (guide_positive is not None) or (guided and len(list(guide_negatives)) != len(negatives)):
        raise ValueError(f"{caller}: give the guide's embeddings for every column (anchor, positive, negatives) or none")

    def candidates_of(positives: torch.Tensor, negative_columns: Sequence[torch.Tensor]) -> torch.Tensor:
        # The local positives go first, so row i's positive is candidate i; the softmax does not
        # depend on the order of the other columns, and the positive-positive block stays the first P.
        if offset:
            positives = torch.cat([positives[offset : offset + batch_size], positives[:offset], positives[offset + batch_size :]])
        return torch.cat([positives, *negative_columns])

    student_anchor = _unit_rows(anchor, COSINE_SIMILARITY_EPS)
    student_candidates = _unit_rows(candidates_of(positive, negatives), COSINE_SIMILARITY_EPS)
    guide_anchors = guide_candidates = None
    if guided:
        _check_columns(caller, guide_anchor, [guide_positive, *guide_negatives])
        with torch.no_grad():
            guide_anchors = _unit_rows(guide_anchor.detach(), COSINE_SIMILARITY_EPS)
            guide_candidates = _unit_rows(candidates_of(guide_positive, list(guide_negatives)).detach(), COSINE_SIMILARITY_EPS)
    return masked_infonce_mean(
        student_anchor,
        student_candidates,
        guide_anchors,
        guide_candidates,
        scale=1.0 / temperature,
        margin_strategy=margin_strategy,
        margin=margin,
        anchor_anchor=contrast_anchors,
        positive_candidate_columns=world_rows if contrast_positives else 0,
        exclude_self=False,
    )


def _similarity_name(similarity: str | Callable) -> str | None:
    if isinstance(similarity, str):
        if similarity not in ("cosine", "dot"):
            raise ValueError(f"unknown similarity {similarity!r}; expected 'cosine', 'dot' or a callable")
        return similarity
    from sentence_transformers import util

    if similarity is util.cos_sim:
        return "cosine"
    if similarity is util.dot_score:
        return "dot"
    return None


def mnrl_runs_fused(
    similarity: str | Callable, directions: Sequence[str], partition_mode: str, hardness_mode: str | None, hardness_strength: float
) -> bool:
    """Whether these MultipleNegativesRankingLoss options run on the fused kernel (else the reference).

    The kernel covers cosine and dot similarity with every direction set, both partition modes and
    every hardness mode; any other similarity function runs on the reference.
    """
    return _similarity_name(similarity) is not None


def multiple_negatives_ranking_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: Sequence[torch.Tensor] = (),
    *,
    scale: float = 20.0,
    similarity: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cosine",
    directions: Sequence[str] = ("query_to_doc",),
    partition_mode: str = "joint",
    hardness_mode: str | None = None,
    hardness_strength: float = 0.0,
) -> torch.Tensor:
    """MultipleNegativesRankingLoss (InfoNCE with in-batch negatives), sentence-transformers 6.2 options.

    Args:
        anchor: [N, D] queries; positive: [N, D] their documents; negatives: [N, D] hard-negative columns.
        scale: logits are ``scale * similarity``.
        similarity: "cosine" (``util.cos_sim``), "dot" (``util.dot_score``) or a callable
            ([R, D], [C, D]) -> [R, C] (reference path).
        directions: any of "query_to_doc" (required), "query_to_query", "doc_to_query", "doc_to_doc".
        partition_mode: "joint" (one softmax over every direction) or "per_direction" (one per
            direction, log-normalisers averaged).
        hardness_mode, hardness_strength: sentence-transformers' hardness weighting: the query-to-doc
            logits the mode selects ("in_batch_negatives", "hard_negatives", "all_negatives") get
            ``+ hardness_strength * stop_grad(similarity)``.

    Returns:
        Scalar loss equal to sentence-transformers' ``MultipleNegativesRankingLoss``.
    """
    caller = "multiple_negatives_ranking_loss"
    negatives = list(negatives)
    _check_columns(caller, anchor, [positive, *negatives], rows=anchor.shape[0])
    directions = tuple(directions)
    if not directions or not set(directions) <= set(DIRECTIONS) or "query_to_doc" not in directions:
        raise ValueError(f"{caller}: directions must include 'query_to_doc' and only use {DIRECTIONS}, got {directions}")
    if partition_mode not in PARTITION_MODES:
        raise ValueError(f"{caller}: partition_mode must be one of {PARTITION_MODES}, got {partition_mode!r}")
    if hardness_mode not in HARDNESS_MODES:
        raise ValueError(f"{caller}: hardness_mode must be one of {HARDNESS_MODES}, got {hardness_mode!r}")
    if not scale > 0:
        raise ValueError(f"{caller}: scale must be positive, got {scale}")
    name = _similarity_name(similarity)
    if not mnrl_runs_fused(similarity, directions, partition_mode, hardness_mode, hardness_strength):
        if name is not None:
            from sentence_transformers import util

            similarity = util.cos_sim if name == "cosine" else util.dot_score
        return reference_mnrl(
            anchor, [positive, *negatives], similarity, scale, directions, partition_mode, hardness_mode, hardness_strength
        )
    candidates = torch.cat([positive, *negatives])
    if name == "cosine":
        # util.cos_sim normalises with F.normalize (eps 1e-12).
        anchor, candidates = F.normalize(anchor, p=2, dim=1), F.normalize(candidates, p=2, dim=1)
    # The op's blocks come in sentence-transformers' direction order whatever order ``directions``
    # lists them in: the per-direction average is the same either way.
    return masked_infonce_mean(
        anchor,
        candidates,
        scale=scale,
        anchor_anchor="query_to_query" in directions,
        positive_anchor="doc_to_query" in directions,
        positive_candidate_columns=candidates.shape[0] if "doc_to_doc" in directions else 0,
        exclude_self=True,
        partition_mode=partition_mode,
        hardness_mode=hardness_mode if hardness_mode is not None and hardness_strength > 0.0 else "none",
        hardness_strength=hardness_strength,
    )
