"""In-batch-negative contrastive losses on raw embeddings: GISTEmbed and MultipleNegativesRanking.

Both run on ``embedplug::masked_infonce_mean``: cosine normalisation happens here in differentiable
torch (O(N D)), the op works on dot products and never materialises an N x N matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from embedplug._validation import (
    check_embeddings,
    check_finite_number,
    check_mnrl_options,
    check_positive_number,
    check_same_device,
    checked_similarity,
    warns_non_finite_input,
)
from embedplug.ops import masked_infonce, masked_infonce_mean
from embedplug.ops.masked_infonce import guide_thresholds
from embedplug.ops.masked_infonce import multiple_negatives_ranking_loss as reference_mnrl
from embedplug.st_version import StSemantics, semantics_for

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


@warns_non_finite_input
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
    st_version: str | StSemantics | None = None,
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
        offset: the first row of this device's positives in the gathered ``positive`` (0 unless gathered).
        st_version: the sentence-transformers release whose rules to follow ("6.2", "6.3"); None
            (default) follows the installed one (:mod:`embedplug.st_version`). From 6.3 each row's
            own anchor-anchor and positive-positive similarity is always out of the softmax;
            before, only when the guide's margin rule drops it.

    Returns:
        Scalar mean cross-entropy, equal to sentence-transformers' ``GISTEmbedLoss``.
    """
    caller = "gist_embed_loss"
    masks_own_similarity = semantics_for(st_version).gist_masks_own_similarity
    negatives = list(negatives)
    _check_columns(caller, anchor, [positive, *negatives])
    batch_size, world_rows = anchor.shape[0], positive.shape[0]
    if world_rows % batch_size or not 0 <= offset <= world_rows - batch_size or offset % batch_size:
        raise ValueError(f"{caller}: positives ({world_rows} rows) must hold the {batch_size} local rows at offset {offset}")
    if any(negative.shape[0] != world_rows for negative in negatives):
        raise ValueError(f"{caller}: every negative column must have as many rows as the positives ({world_rows})")
    if margin_strategy not in MARGIN_STRATEGIES:
        raise ValueError(f"{caller}: margin_strategy must be 'absolute' or 'relative', got {margin_strategy!r}")
    temperature = check_positive_number(temperature, "temperature", caller)
    margin = check_finite_number(margin, "margin", caller)
    guided = guide_anchor is not None
    guide_negatives = list(guide_negatives)
    if guided != (guide_positive is not None) or (guided and len(guide_negatives) != len(negatives)):
        raise ValueError(f"{caller}: give the guide's embeddings for every column (anchor, positive, negatives) or none")
    if guided:
        check_same_device(caller, anchor=anchor, guide_anchor=guide_anchor)
        for name, student, guide in [
            ("guide_anchor", anchor, guide_anchor), ("guide_positive", positive, guide_positive),
            *[(f"guide_negatives[{i}]", s, g) for i, (s, g) in enumerate(zip(negatives, guide_negatives))],
        ]:
            if not isinstance(guide, torch.Tensor) or guide.dim() != 2 or guide.shape[0] != student.shape[0]:
                shape = tuple(guide.shape) if isinstance(guide, torch.Tensor) else type(guide).__name__
                raise ValueError(
                    f"{caller}: {name} must have one row per student row ({student.shape[0]}), got shape {shape}"
                )

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
    options = dict(
        scale=1.0 / temperature,
        margin_strategy=margin_strategy,
        margin=margin,
        anchor_anchor=contrast_anchors,
        positive_candidate_columns=world_rows if contrast_positives else 0,
        exclude_self=masks_own_similarity,
    )
    if masks_own_similarity and contrast_positives and world_rows > batch_size:
        return _gathered_gist_with_own_similarity_masked(
            student_anchor, student_candidates, guide_anchors, guide_candidates, batch_size, world_rows, options
        )
    return masked_infonce_mean(student_anchor, student_candidates, guide_anchors, guide_candidates, **options)


def _gathered_gist_with_own_similarity_masked(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    guide_anchors: torch.Tensor | None,
    guide_candidates: torch.Tensor | None,
    batch_size: int,
    world_rows: int,
    options: dict,
) -> torch.Tensor:
    """GIST over gathered positives with only each row's own positive-positive similarity masked.

    ``anchors`` [B, D] and ``candidates`` [P + k P, D] are unit rows, the local positives first
    (candidate i is row i's positive), P = world_size * B. The kernel's ``exclude_self`` drops
    positive-positive columns j with j mod B == i: row i's own positive, and also the other ranks'
    positives at the same local row, which sentence-transformers keeps (its mask is the single
    entry ``pp_sim[rows, offset + rows]``). Those W - 1 logits per row are added back here, under
    the guide's rule, by merging them into each row's log-normaliser: O(B W D) work on top of the
    fused op.
    """
    scale, margin_strategy, margin = options["scale"], options["margin_strategy"], options["margin"]
    rows = torch.arange(batch_size, device=anchors.device)
    positives = candidates[:batch_size]
    row_loss, _ = masked_infonce(anchors, candidates, guide_anchors, guide_candidates, **options)
    target_logit = scale * (anchors * positives).sum(dim=1)
    # masked_infonce returns lse_i - target_i, differentiable in both; adding the target back gives lse_i.
    log_normalizers = [row_loss + target_logit]
    if guide_anchors is None:  # self-guided: the student's own detached similarities decide
        guide_anchors, guide_candidates = anchors.detach(), candidates.detach()
    threshold = guide_thresholds(guide_anchors, guide_candidates[:batch_size], margin_strategy, margin)
    for block in range(1, world_rows // batch_size):
        same_row = block * batch_size + rows
        guide_similarity = (guide_candidates[:batch_size] * guide_candidates[same_row]).sum(dim=1)
        logit = scale * (positives * candidates[same_row]).sum(dim=1)
        # The guide's rule as the kernel applies it: a strictly larger guide similarity drops the entry.
        log_normalizers.append(logit.masked_fill(guide_similarity > threshold, float("-inf")))
    log_normalizer = torch.logsumexp(torch.stack(log_normalizers, dim=1), dim=1)
    return (log_normalizer - target_logit).mean()


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


@warns_non_finite_input
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
    check_mnrl_options(
        caller, scale, directions, partition_mode, hardness_mode, hardness_strength, DIRECTIONS, PARTITION_MODES,
        HARDNESS_MODES,
    )
    name = _similarity_name(similarity)
    if not mnrl_runs_fused(similarity, directions, partition_mode, hardness_mode, hardness_strength):
        if name is not None:
            from sentence_transformers import util

            similarity = util.cos_sim if name == "cosine" else util.dot_score
        return reference_mnrl(
            anchor, [positive, *negatives], checked_similarity(similarity, caller), scale, directions, partition_mode,
            hardness_mode, hardness_strength,
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


def gathered_multiple_negatives_ranking_loss(
    queries: torch.Tensor,
    docs: Sequence[torch.Tensor],
    gathered_queries: torch.Tensor | None,
    gathered_docs: Sequence[torch.Tensor],
    layout,
    *,
    scale: float = 20.0,
    similarity: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cosine",
    directions: Sequence[str] = ("query_to_doc",),
) -> torch.Tensor:
    """This rank's share of the joint-softmax MultipleNegativesRankingLoss of a gathered batch, fused.

    Args:
        queries: [B, D] this rank's queries; docs: its positive and negative columns, [B, D] each.
        gathered_queries: [T, D] every rank's queries (T = layout.total, rank order, see
            :class:`embedplug.distributed.GatheredLayout`); needed for query_to_query and
            doc_to_query only (else None).
        gathered_docs: every rank's positives and negatives, column by column, [T, D] each.
        layout: the ranks' batch sizes, which must be equal (the kernel's candidates are whole
            columns of B rows).
        scale, similarity: as in :func:`multiple_negatives_ranking_loss` ("cosine" or "dot").
        directions: any of DIRECTIONS with "query_to_doc", one joint softmax.

    Returns:
        Scalar: the mean over this rank's rows of the cross-entropy of each row's joint softmax
        over the whole gathered batch (sentence-transformers' gathered loss), times
        ``layout.scale_for_local_mean()`` (1 with equal sizes); the ranks' values average to the
        single-process loss on the concatenated batch.

    With query_to_doc alone this is one fused call (local positives first, so candidate i is row
    i's positive). With more directions each row's log-sum-exp is merged from three fused calls:
    the local batch with its own exclusions (one process's rules on B rows), this rank's queries
    against the other ranks' candidates, and its positives against the other ranks' queries
    and documents (no exclusions there: other ranks hold no row's own documents).
    """
    caller = "multiple_negatives_ranking_loss"
    docs, gathered_docs = list(docs), list(gathered_docs)
    directions = set(directions)
    name = _similarity_name(similarity)
    if name is None:
        raise ValueError(f"{caller}: the gathered fused path needs 'cosine' or 'dot' similarity")
    if not layout.equal_sizes:
        raise ValueError(f"{caller}: the gathered fused path needs equal per-rank batch sizes, got {layout.sizes}")

    def unit(rows: torch.Tensor) -> torch.Tensor:
        # util.cos_sim normalises with F.normalize (eps 1e-12).
        return F.normalize(rows, p=2, dim=1) if name == "cosine" else rows

    if directions == {"query_to_doc"}:
        positives, *negatives = gathered_docs
        candidates = torch.cat([layout.local_first(positives), *negatives])
        _check_columns(caller, queries, [candidates])
        loss = masked_infonce_mean(unit(queries), unit(candidates), scale=scale, exclude_self=True)
        return loss * layout.scale_for_local_mean()

    def remote(gathered: torch.Tensor) -> torch.Tensor:
        start, stop = layout.offset, layout.offset + layout.local_size
        return torch.cat([gathered[:start], gathered[stop:]])

    rows = queries.shape[0]
    query_rows, local_docs = unit(queries), [unit(doc) for doc in docs]
    positive_rows = local_docs[0]
    positive_logit = scale * (query_rows * positive_rows).sum(dim=1)

    def row_log_normalizer(anchors: torch.Tensor, candidates: torch.Tensor, **options) -> torch.Tensor:
        # masked_infonce returns lse_i - scale <a_i, c_i> (differentiable); adding the dot back gives lse_i.
        loss, _ = masked_infonce(anchors, candidates, scale=scale, exclude_self=True, **options)
        return loss + scale * (anchors * candidates[:rows]).sum(dim=1)

    local_candidates = torch.cat(local_docs)
    parts = [
        row_log_normalizer(
            query_rows,
            local_candidates,
            anchor_anchor="query_to_query" in directions,
            positive_anchor="doc_to_query" in directions,
            positive_candidate_columns=local_candidates.shape[0] if "doc_to_doc" in directions else 0,
        )
    ]
    if layout.world_size > 1:
        remote_docs = [unit(remote(doc)) for doc in gathered_docs]
        needs_queries = directions & {"query_to_query", "doc_to_query"}
        remote_queries = unit(remote(gathered_queries)) if needs_queries else None
        query_candidates = remote_docs + ([remote_queries] if "query_to_query" in directions else [])
        parts.append(row_log_normalizer(query_rows, torch.cat(query_candidates)))
        positive_candidates = ([remote_queries] if "doc_to_query" in directions else []) + (
            remote_docs if "doc_to_doc" in directions else []
        )
        if positive_candidates:
            parts.append(row_log_normalizer(positive_rows, torch.cat(positive_candidates)))
    log_normalizer = torch.logsumexp(torch.stack(parts, dim=1), dim=1)
    return (log_normalizer - positive_logit).mean() * layout.scale_for_local_mean()


def check_columns(caller: str, anchor: torch.Tensor, columns: Sequence[torch.Tensor]) -> None:
    """Raises TypeError/ValueError unless ``anchor`` and every column are floating [N, D] tensors of
    one shape on one device (a rank's input checks before it gathers)."""
    _check_columns(caller, anchor, list(columns), rows=anchor.shape[0] if isinstance(anchor, torch.Tensor) else None)
