"""``topk_hard_negatives``: exact streamed hard-negative top-k on embedding tensors, for hand-written pipelines.

The checks live here; :func:`run_hard_negative_topk` is the single place that runs the computation,
so the fused op can take over behind it without touching any caller.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from embedplug.ops.hard_negative_topk import hard_negative_topk as fused_hard_negative_topk
from embedplug.reference import hard_negative_topk as reference
from embedplug.reference.hard_negative_topk import REMOVAL_NAMES, HardNegativeTopK

__all__ = ["REMOVAL_NAMES", "HardNegativeTopK", "run_hard_negative_topk", "search_hard_negatives", "topk_hard_negatives"]

CALLER = "topk_hard_negatives"

IndexLists = torch.Tensor | Sequence[Sequence[int]] | Sequence[int] | None


def topk_hard_negatives(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    *,
    positives: IndexLists,
    positive_scores: torch.Tensor | None = None,
    exclude_positives: bool = True,
    excluded: IndexLists = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    range_min: int = 0,
    range_max: int | None = None,
    reserved_slots: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query, the ``k`` best corpus rows by ``queries @ corpus.T`` that pass the false-negative filters.

    Exact (no approximate index) and streamed: memory beyond the inputs is O(Q * k + one tile), so a
    corpus of millions of rows never becomes a Q x C matrix. Normalise the embeddings first for cosine.
    Filters follow sentence-transformers' ``mine_hard_negatives`` exactly; see
    :mod:`embedplug.reference.hard_negative_topk` for every rule and the rank window.

    Args:
        queries: [Q, D] floating tensor (CPU or CUDA).
        corpus: [C, D] same dtype and device. Identical texts must share one row (de-duplicate texts
            first, e.g. with :func:`embedplug.mining.unique_texts`): a positive's duplicates are then
            its own index and are excluded with it.
        k: negatives per query (>= 1; at most ``range_max - range_min`` when ``range_max`` is given).
        positives: each query's positive corpus indices: [Q] or [Q, P] int tensor (-1 = padding), a
            list of ints, or a list of lists (ragged). ``None``: nothing to exclude, no margins.
        positive_scores: [Q, P] the positives' scores for the margins, if not the dot products.
        exclude_positives: False keeps positives as candidates (``include_positives=True`` in ST).
        excluded: more corpus indices per query to drop, same forms as ``positives``.
        absolute_margin: drop candidates with ``score + absolute_margin > hardest positive score``.
        relative_margin: drop candidates with ``score > p - |p| * relative_margin``, p the hardest positive.
        max_score: drop candidates with ``score > max_score``.
        min_score: drop candidates with ``score < min_score``.
        range_min: skip the ``range_min`` best surviving candidates.
        range_max: consider only the ``range_max + reserved_slots`` best rows by raw score, and of
            those the survivors ranked below ``range_max`` (sentence-transformers' window); ``None``:
            the whole corpus.
        reserved_slots: raw rows retrieved beyond ``range_max`` (default: the width of ``positives``
            plus that of ``excluded``).

    Returns:
        ``(scores, indices)``: [Q, k] in the inputs' dtype (float32 for half inputs) and [Q, k] int64,
        best first, ties by the lower index; ``(-inf, -1)`` where fewer than k candidates were left.
    """
    result = search_hard_negatives(
        queries, corpus, k, positives=positives, positive_scores=positive_scores,
        exclude_positives=exclude_positives, excluded=excluded, absolute_margin=absolute_margin,
        relative_margin=relative_margin, max_score=max_score, min_score=min_score, range_min=range_min,
        range_max=range_max, reserved_slots=reserved_slots,
    )
    return result.scores, result.indices


def search_hard_negatives(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    *,
    positives: IndexLists,
    positive_scores: torch.Tensor | None = None,
    exclude_positives: bool = True,
    excluded: IndexLists = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    range_min: int = 0,
    range_max: int | None = None,
    reserved_slots: int | None = None,
) -> HardNegativeTopK:
    """:func:`topk_hard_negatives` that also returns how many candidates each rule removed.

    Returns:
        :class:`HardNegativeTopK` ``(scores [Q, k], indices [Q, k], removed [6], considered)``;
        ``removed`` counts per name in :data:`REMOVAL_NAMES`.
    """
    queries, corpus = _check_embeddings(queries, corpus)
    num_queries, num_corpus = queries.shape[0], corpus.shape[0]
    k = _check_count(k, "k", minimum=1)
    range_min = _check_count(range_min, "range_min", minimum=0)
    if range_max is not None:
        range_max = _check_count(range_max, "range_max", minimum=1)
        if range_min >= range_max:
            raise ValueError(f"{CALLER}: range_min must be smaller than range_max, got {range_min} and {range_max}")
        if k > range_max - range_min:
            raise ValueError(
                f"{CALLER}: k={k} does not fit the rank window: only range_max - range_min = "
                f"{range_max - range_min} candidates are kept"
            )
    if reserved_slots is not None:
        reserved_slots = _check_count(reserved_slots, "reserved_slots", minimum=0)
    positives = index_matrix(positives, num_queries, num_corpus, queries.device, "positives")
    excluded = index_matrix(excluded, num_queries, num_corpus, queries.device, "excluded")
    thresholds = {
        name: _check_real(value, name)
        for name, value in (
            ("absolute_margin", absolute_margin), ("relative_margin", relative_margin),
            ("max_score", max_score), ("min_score", min_score),
        )
    }
    if thresholds["absolute_margin"] is not None or thresholds["relative_margin"] is not None:
        _check_every_query_has_a_positive(positives)
    if positive_scores is not None:
        positive_scores = _check_positive_scores(positive_scores, positives, queries)
    return run_hard_negative_topk(
        queries, corpus, k, positives=positives, positive_scores=positive_scores, excluded=excluded,
        exclude_positives=bool(exclude_positives), range_min=range_min, range_max=range_max,
        reserved_slots=reserved_slots, **thresholds,
    )


def run_hard_negative_topk(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    *,
    positives: torch.Tensor,
    positive_scores: torch.Tensor | None,
    excluded: torch.Tensor,
    exclude_positives: bool,
    absolute_margin: float | None,
    relative_margin: float | None,
    max_score: float | None,
    min_score: float | None,
    range_min: int,
    range_max: int | None,
    reserved_slots: int | None,
    similarity=None,
) -> HardNegativeTopK:
    """The computation on checked inputs: the one call the fused op replaces.

    queries [Q, D] and corpus [C, D] (same floating dtype and device, finite), positives [Q, P] and
    excluded [Q, E] int64 (-1 padding, values < C), positive_scores [Q, P] or None, the filters as
    floats or None, ``1 <= k <= range_max - range_min`` when range_max is set. Returns
    :class:`HardNegativeTopK`; the semantics are :func:`embedplug.reference.hard_negative_topk.hard_negative_topk`'s.
    ``similarity`` (a non-GEMM score function, e.g. a model's euclidean similarity) always runs the reference;
    dot-product scores run the op ``embedplug::hard_negative_topk`` (fused on CPU and CUDA, the same
    reference where the extension is missing or :func:`embedplug.ops.force_reference` is on).
    """
    if similarity is not None:
        return reference.hard_negative_topk(
            queries, corpus, k, positives=positives, positive_scores=positive_scores, excluded=excluded,
            exclude_positives=exclude_positives, absolute_margin=absolute_margin, relative_margin=relative_margin,
            max_score=max_score, min_score=min_score, range_min=range_min, range_max=range_max,
            reserved_slots=reserved_slots, similarity=similarity,
        )
    if positive_scores is None:
        # Only the margins read the positives' scores; computed as the reference computes them.
        uses_margins = absolute_margin is not None or relative_margin is not None
        positive_scores = (
            reference.dot_pair_scores(queries, corpus, positives) if uses_margins
            else queries.new_zeros(positives.shape)
        )
    scores, indices, removed = fused_hard_negative_topk(
        queries, corpus, k, positives, positive_scores, excluded, exclude_positives, absolute_margin,
        relative_margin, max_score, min_score, range_min, range_max, reserved_slots,
    )
    window = None if range_max is None else range_max + (
        positives.shape[1] + excluded.shape[1] if reserved_slots is None else reserved_slots
    )
    return HardNegativeTopK(
        scores, indices, removed, reference.considered_candidates(queries.shape[0], corpus.shape[0], window)
    )


# --------------------------------------------------------------------------------------------------
# Checks


def _check_embeddings(queries, corpus) -> tuple[torch.Tensor, torch.Tensor]:
    for name, tensor in (("queries", queries), ("corpus", corpus)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{CALLER}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 2:
            raise ValueError(f"{CALLER}: {name} must be 2-D [rows, D], got shape {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise TypeError(f"{CALLER}: {name} must be a floating-point tensor, got {tensor.dtype}")
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(
            f"{CALLER}: queries and corpus must have the same embedding dimension, got {queries.shape[1]} "
            f"and {corpus.shape[1]}"
        )
    if queries.device != corpus.device:
        raise ValueError(f"{CALLER}: queries are on {queries.device} but corpus on {corpus.device}")
    if queries.dtype != corpus.dtype:
        raise TypeError(f"{CALLER}: queries are {queries.dtype} but corpus is {corpus.dtype}; convert one")
    if queries.shape[0] == 0:
        raise ValueError(f"{CALLER}: no queries (Q = 0)")
    if corpus.shape[0] == 0:
        raise ValueError(f"{CALLER}: empty corpus (C = 0)")
    queries, corpus = queries.detach(), corpus.detach()
    if queries.dtype in (torch.float16, torch.bfloat16):
        queries, corpus = queries.float(), corpus.float()
    for name, tensor in (("queries", queries), ("corpus", corpus)):
        if not _all_finite(tensor):
            raise ValueError(f"{CALLER}: {name} holds NaN or infinite values")
    return queries, corpus


# Elements per finiteness check: isfinite makes temporaries of its input's size (a float abs, bool
# masks), a few hundred MB for a whole corpus at C = 200,000, D = 384, far more than the fused
# selection itself needs; in blocks of 2^18 elements they stay near 3 MB.
_FINITE_CHECK_ELEMENTS = 1 << 18


def _all_finite(tensor: torch.Tensor) -> bool:
    rows = max(1, _FINITE_CHECK_ELEMENTS // max(tensor.shape[1], 1))
    return all(bool(torch.isfinite(block).all()) for block in tensor.split(rows))


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{CALLER}: {name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{CALLER}: {name} must be at least {minimum}, got {value}")
    return int(value)


def _check_real(value, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{CALLER}: {name} must be a finite real number or None, got {value!r}")
    return float(value)


def index_matrix(indices: IndexLists, num_queries: int, num_corpus: int, device, name: str) -> torch.Tensor:
    """``indices`` in any accepted form as a [Q, P] int64 tensor on ``device``, -1 as padding; checked."""
    if indices is None:
        return torch.empty((num_queries, 0), dtype=torch.long, device=device)
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise TypeError(f"{CALLER}: {name} must hold integer corpus indices, got {indices.dtype}")
        matrix = indices.to(torch.long)
        if matrix.dim() == 1:
            matrix = matrix.unsqueeze(1)
        matrix = matrix.to(device)  # a few indices per query: moving them is cheap and saves the caller a step
    else:
        rows = list(indices)
        rows = [[row] if isinstance(row, numbers.Integral) else list(row) for row in rows]
        width = max((len(row) for row in rows), default=0)
        for row in rows:
            for value in row:
                if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                    raise TypeError(f"{CALLER}: {name} must hold integer corpus indices, got {value!r}")
        matrix = torch.tensor([row + [-1] * (width - len(row)) for row in rows], dtype=torch.long).reshape(
            len(rows), width
        ).to(device)
    if matrix.dim() != 2 or matrix.shape[0] != num_queries:
        raise ValueError(
            f"{CALLER}: {name} must have one row per query ({num_queries}), got shape {tuple(matrix.shape)}"
        )
    if matrix.numel() and (matrix.min() < -1 or matrix.max() >= num_corpus):
        bad = matrix[(matrix < -1) | (matrix >= num_corpus)][0].item()
        raise IndexError(
            f"{CALLER}: {name} holds corpus index {bad}, outside 0..{num_corpus - 1} (-1 marks padding)"
        )
    return matrix


def _check_every_query_has_a_positive(positives: torch.Tensor) -> None:
    has_positive = (positives >= 0).any(dim=1) if positives.shape[1] else torch.zeros(
        positives.shape[0], dtype=torch.bool, device=positives.device
    )
    if not bool(has_positive.all()):
        query = int((~has_positive).nonzero()[0])
        raise ValueError(
            f"{CALLER}: absolute_margin/relative_margin compare against the query's positive, but query {query} "
            "has none"
        )


def _check_positive_scores(positive_scores, positives: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    if not isinstance(positive_scores, torch.Tensor) or not positive_scores.is_floating_point():
        raise TypeError(f"{CALLER}: positive_scores must be a floating-point tensor")
    if positive_scores.dim() == 1:
        positive_scores = positive_scores.unsqueeze(1)
    if positive_scores.shape != positives.shape:
        raise ValueError(
            f"{CALLER}: positive_scores must match positives' shape {tuple(positives.shape)}, got "
            f"{tuple(positive_scores.shape)}"
        )
    if positive_scores.device != queries.device:
        raise ValueError(f"{CALLER}: positive_scores are on {positive_scores.device} but queries on {queries.device}")
    return positive_scores.detach().to(queries.dtype)
