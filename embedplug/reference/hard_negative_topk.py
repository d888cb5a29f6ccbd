"""Reference hard-negative top-k: the semantics of dataset-scale hard-negative mining, streamed over tiles.

For each query, the scores and corpus indices of the ``k`` best corpus rows that survive the
false-negative filters of sentence-transformers' ``mine_hard_negatives``: the query's positives
(and any other excluded rows) removed, ``absolute_margin`` / ``relative_margin`` against the
query's hardest positive, ``max_score`` and ``min_score``, and the rank window
``range_min`` / ``range_max``. This is the pure-torch fallback at run time and the oracle the fused
op is tested against.

Streaming, as FAISS's flat search does it: one GEMM per (query block x corpus block) tile into a
bounded buffer, then an epilogue that folds the tile into a running best list per query. Memory
beyond the inputs is O(Q * keep + tile), never O(Q * C).

Order: score descending, ties by the lower corpus index, on every device and tile shape. Rows with
fewer than ``k`` candidates left are padded with ``(-inf, -1)``.

Two modes, as sentence-transformers defines the rank window:

* ``range_max=None`` (open): every corpus row is a candidate. Exclusions and filters are applied in
  the tile epilogue, before a row may enter the running list of the ``range_min + k`` best; the
  result is the survivors ranked ``range_min .. range_min + k - 1``.
* ``range_max`` set (window): only the ``window = range_max + reserved_slots`` best rows by raw score
  are candidates (sentence-transformers retrieves ``range_max + max_positives`` rows in 6.2,
  ``range_max + max_positives + 1`` in 6.3, so that the excluded rows do not eat into the window).
  The stream keeps that raw list; exclusions and filters then run on it (:func:`select_candidates`),
  and the result is the first ``k`` of the survivors ranked ``range_min .. range_max - 1``.

Filters, in sentence-transformers' order and with its exact comparisons (each in the scores' dtype):
``excluded`` rows, then positives (unless ``exclude_positives=False``), then
``score + absolute_margin > hardest_positive``, then
``score > hardest_positive - |hardest_positive| * relative_margin``, then ``score > max_score``, then
``score < min_score``; ``hardest_positive`` is the lowest of the query's positive scores. Each
removed candidate is counted once, by the first rule that removes it (:data:`REMOVAL_NAMES`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

# What each entry of HardNegativeTopK.removed counts, in the order the rules run.
REMOVAL_NAMES = ("excluded", "positives", "absolute_margin", "relative_margin", "max_score", "min_score")
FILTER_NAMES = REMOVAL_NAMES[2:]

# One similarity tile holds at most this many scores (16 MiB in float32). Problems that fit run as a
# single GEMM, which keeps their scores bitwise equal to sentence-transformers' full-matrix product.
DEFAULT_TILE_ELEMENTS = 1 << 22
# Query rows per tile when the problem does not fit one tile.
DEFAULT_TILE_ROWS = 1024

# (query_start, query_stop, corpus_start, corpus_stop) -> scores [query_stop - query_start, corpus_stop - corpus_start]
TileScores = Callable[[int, int, int, int], torch.Tensor]


class HardNegativeTopK(NamedTuple):
    """``scores`` [Q, k] and ``indices`` [Q, k] (int64, -1 where no candidate was left), best first;
    ``removed`` [len(REMOVAL_NAMES)] int64: candidates removed per rule, over the candidates considered;
    ``considered``: that number of candidates (Q x C in open mode, Q x min(window, C) in window mode)."""

    scores: torch.Tensor
    indices: torch.Tensor
    removed: torch.Tensor
    considered: int


@dataclasses.dataclass(frozen=True)
class CandidateFilters:
    """sentence-transformers' false-negative filters; ``None`` switches one off."""

    absolute_margin: float | None = None
    relative_margin: float | None = None
    max_score: float | None = None
    min_score: float | None = None

    @property
    def uses_positive_scores(self) -> bool:
        return self.absolute_margin is not None or self.relative_margin is not None


def tile_shape(num_queries: int, num_corpus: int, tile_elements: int = DEFAULT_TILE_ELEMENTS) -> tuple[int, int]:
    """(query rows, corpus rows) of one similarity tile: the whole problem when it fits ``tile_elements``."""
    if num_queries * num_corpus <= tile_elements:
        return max(num_queries, 1), max(num_corpus, 1)
    rows = min(num_queries, DEFAULT_TILE_ROWS, max(1, math.isqrt(tile_elements)))
    return rows, max(1, min(num_corpus, tile_elements // rows))


def hard_negative_topk(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    *,
    positives: torch.Tensor | None = None,
    positive_scores: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
    exclude_positives: bool = True,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    range_min: int = 0,
    range_max: int | None = None,
    reserved_slots: int | None = None,
    similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    tile_elements: int = DEFAULT_TILE_ELEMENTS,
) -> HardNegativeTopK:
    """The ``k`` best surviving corpus rows per query, streamed over similarity tiles.

    Args:
        queries: [Q, D]; corpus: [C, D], same dtype and device. Scores are ``queries @ corpus.T``
            (normalise both first for cosine), or ``similarity(query_block, corpus_block)`` when given.
        k: how many to return per query; at most ``range_max - range_min`` when ``range_max`` is set.
        positives: [Q, P] int64 corpus indices of each query's positives, -1 as padding; a text that
            appears twice in the corpus must be de-duplicated first (equal texts, equal index).
        positive_scores: [Q, P] each positive's score, used by the margins (default: recomputed as the
            dot product / ``similarity`` of the pair). Padding entries are ignored.
        excluded: [Q, E] int64 corpus indices to drop that are not positives (e.g. the query's own text
            in the corpus), -1 as padding; they neither count as positives nor set margins.
        exclude_positives: False keeps the positives as candidates (sentence-transformers'
            ``include_positives=True``); they still set the margins.
        absolute_margin, relative_margin, max_score, min_score: the filters (module docstring).
            A query without a positive is not filtered by the margins.
        range_min: survivors to skip, best first.
        range_max: see the module docstring (window mode); ``None`` for open mode.
        reserved_slots: extra raw rows retrieved in window mode; default ``P + E``.
        similarity: optional [q, D] x [c, D] -> [q, c] score function for tiles (not a GEMM; the fused
            op does not take it).
        tile_elements: bound on the scores one tile holds.

    Returns:
        :class:`HardNegativeTopK`: scores [Q, k] (the inputs' dtype), indices [Q, k] int64, removal counts.
    """
    num_queries, num_corpus = queries.shape[0], corpus.shape[0]
    device = queries.device
    positives = _index_matrix(positives, num_queries, device)
    excluded = _index_matrix(excluded, num_queries, device)
    filters = CandidateFilters(absolute_margin, relative_margin, max_score, min_score)
    score_block = similarity or _dot
    if positive_scores is None and positives.shape[1] > 0:
        positive_scores = _pair_scores(queries, corpus, positives, score_block)
    hardest_positive = _hardest_positive(positive_scores, positives, num_queries, queries.dtype, device)

    def tile_scores(q0: int, q1: int, c0: int, c1: int) -> torch.Tensor:
        return score_block(queries[q0:q1], corpus[c0:c1])

    window = None if range_max is None else range_max + (
        positives.shape[1] + excluded.shape[1] if reserved_slots is None else reserved_slots
    )
    rules = _Rules(positives, excluded, exclude_positives, hardest_positive, filters)
    if window is None:
        best_scores, best_indices, removed = stream_best(
            tile_scores, num_queries, num_corpus, range_min + k, rules=rules, tile_elements=tile_elements,
            dtype=queries.dtype, device=device,
        )
        best_scores, best_indices = best_scores[:, range_min:], best_indices[:, range_min:]
        return HardNegativeTopK(best_scores, best_indices, removed, considered_candidates(num_queries, num_corpus, None))
    raw_scores, raw_indices, _ = stream_best(
        tile_scores, num_queries, num_corpus, window, rules=None, tile_elements=tile_elements,
        dtype=queries.dtype, device=device,
    )
    scores, indices, removed = select_candidates(
        raw_scores, raw_indices, rules=rules, range_min=range_min, range_max=range_max
    )
    return HardNegativeTopK(scores[:, :k], indices[:, :k], removed, considered_candidates(num_queries, num_corpus, window))


def hard_negative_topk_op(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    positives: torch.Tensor,
    positive_scores: torch.Tensor,
    excluded: torch.Tensor,
    exclude_positives: bool,
    absolute_margin: float | None,
    relative_margin: float | None,
    max_score: float | None,
    min_score: float | None,
    range_min: int,
    range_max: int | None,
    reserved_slots: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`hard_negative_topk` with the positional arguments and public outputs of the op
    ``embedplug::hard_negative_topk``: ``(scores [Q, k], indices [Q, k], removed [6])``.

    ``positive_scores`` [Q, P] is required (the op does not recompute it) and is compared in the
    queries' dtype, as the kernels do.
    """
    for name, matrix in (("positives", positives), ("excluded", excluded)):
        if matrix.numel() and (int(matrix.min()) < -1 or int(matrix.max()) >= corpus.shape[0]):
            raise IndexError(
                f"embedplug::hard_negative_topk: {name} holds corpus indices outside 0..{corpus.shape[0] - 1} "
                f"(-1 marks padding): min {int(matrix.min())}, max {int(matrix.max())}"
            )
    result = hard_negative_topk(
        queries, corpus, k, positives=positives, positive_scores=positive_scores.to(queries.dtype),
        excluded=excluded, exclude_positives=exclude_positives, absolute_margin=absolute_margin,
        relative_margin=relative_margin, max_score=max_score, min_score=min_score, range_min=range_min,
        range_max=range_max, reserved_slots=reserved_slots,
    )
    return result.scores, result.indices, result.removed


def considered_candidates(num_queries: int, num_corpus: int, window: int | None) -> int:
    """How many candidates the rules saw: Q x C in open mode, Q x min(window, C) in window mode."""
    return num_queries * (num_corpus if window is None else min(window, num_corpus))


def dot_pair_scores(queries: torch.Tensor, corpus: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """[Q, P] dot product of each (query, positive) pair, as :func:`hard_negative_topk` computes the
    positive scores it is not given; padding entries get 0 (ignored)."""
    return _pair_scores(queries, corpus, positives, _dot)


# --------------------------------------------------------------------------------------------------
# The rules: exclusions and filters, applied in place to a block of scores


@dataclasses.dataclass
class _Rules:
    positives: torch.Tensor  # [Q, P] int64, -1 padding
    excluded: torch.Tensor  # [Q, E] int64, -1 padding
    exclude_positives: bool
    hardest_positive: torch.Tensor  # [Q], +inf for a query without positives
    filters: CandidateFilters

    def rows(self, start: int, stop: int) -> _Rules:
        return _Rules(
            self.positives[start:stop], self.excluded[start:stop], self.exclude_positives,
            self.hardest_positive[start:stop], self.filters,
        )

    def apply_(self, scores: torch.Tensor, corpus_indices: torch.Tensor) -> torch.Tensor:
        """Set removed candidates of ``scores`` [q, n] to -inf; returns the counts [len(REMOVAL_NAMES)].

        ``corpus_indices`` is [n] (a tile's columns) or [q, n] (a candidate list); -1 marks an empty slot.
        Candidates already at -inf are never counted again.
        """
        counts = torch.zeros(len(REMOVAL_NAMES), dtype=torch.long, device=scores.device)
        neg_inf = float("-inf")
        for slot, (indices, active) in enumerate(((self.excluded, True), (self.positives, self.exclude_positives))):
            if not active or indices.shape[1] == 0:
                continue
            hit = _membership(corpus_indices, indices) & (scores != neg_inf)
            counts[slot] = torch.count_nonzero(hit)
            scores.masked_fill_(hit, neg_inf)
        hardest = self.hardest_positive.unsqueeze(1)
        for slot, removed in enumerate(self._filter_masks(scores, hardest), start=2):
            if removed is None:
                continue
            counts[slot] = torch.count_nonzero(removed)
            scores.masked_fill_(removed, neg_inf)
        return counts

    def _filter_masks(self, scores: torch.Tensor, hardest: torch.Tensor):
        # Generator: each mask is computed after the previous one was applied, as sentence-transformers does.
        filters = self.filters
        yield None if filters.absolute_margin is None else scores + filters.absolute_margin > hardest
        if filters.relative_margin is None:
            yield None
        else:
            threshold = hardest - hardest.abs() * filters.relative_margin
            yield scores > threshold.nan_to_num(nan=float("inf"))  # inf - inf: a query without positives
        yield None if filters.max_score is None else scores > filters.max_score
        # -inf is below any min_score: only count what is still a candidate (sentence-transformers 6.3).
        yield None if filters.min_score is None else (scores < filters.min_score) & (scores != float("-inf"))


def _membership(corpus_indices: torch.Tensor, index_matrix: torch.Tensor) -> torch.Tensor:
    """[q, n] True where ``corpus_indices`` is one of the row's (non-padding) ``index_matrix`` [q, m] entries."""
    hit = None
    for column in index_matrix.unbind(1):
        column = column.unsqueeze(1)
        match = (corpus_indices == column) & (column >= 0)
        hit = match if hit is None else hit | match
    return hit


# --------------------------------------------------------------------------------------------------
# Streaming: GEMM tiles folded into a running best list


def stream_best(
    tile_scores: TileScores,
    num_queries: int,
    num_corpus: int,
    keep: int,
    *,
    rules: _Rules | None,
    tile_elements: int = DEFAULT_TILE_ELEMENTS,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``keep`` best (score, corpus index) per query over all tiles, rules applied per tile if given.

    Returns scores [Q, keep], indices [Q, keep] (int64; -1 with -inf where fewer rows were left) and
    the removal counts [len(REMOVAL_NAMES)].
    """
    rows_per_tile, columns_per_tile = tile_shape(num_queries, num_corpus, tile_elements)
    removed = torch.zeros(len(REMOVAL_NAMES), dtype=torch.long, device=device)
    best_scores = torch.full((num_queries, keep), float("-inf"), dtype=dtype, device=device)
    best_indices = torch.full((num_queries, keep), -1, dtype=torch.long, device=device)
    for q0 in range(0, num_queries, rows_per_tile):
        q1 = min(q0 + rows_per_tile, num_queries)
        block_rules = None if rules is None else rules.rows(q0, q1)
        row_scores, row_indices = best_scores[q0:q1], best_indices[q0:q1]
        for c0 in range(0, num_corpus, columns_per_tile):
            c1 = min(c0 + columns_per_tile, num_corpus)
            tile = tile_scores(q0, q1, c0, c1)
            if block_rules is not None:
                if not tile.is_contiguous() or tile._base is not None:
                    tile = tile.clone()  # never write into a caller's tensor
                removed += block_rules.apply_(tile, torch.arange(c0, c1, device=device))
            tile_best_scores, tile_best_indices = _tile_best(tile, keep, c0)
            row_scores, row_indices = _merge(row_scores, row_indices, tile_best_scores, tile_best_indices, keep)
        best_scores[q0:q1], best_indices[q0:q1] = row_scores, row_indices
    best_indices.masked_fill_(best_scores == float("-inf"), -1)
    return best_scores, best_indices, removed


def _tile_best(tile: torch.Tensor, keep: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``min(keep, n)`` best of ``tile`` [q, n] per row, ordered by corpus index (not by score).

    torch.topk picks an arbitrary subset among entries tied at the boundary value. One extra value
    tells whether a tie crosses the boundary; only those rows are redone with a stable sort, so that
    the lowest indices win. (No full-tile temporary: this runs once per tile.)
    """
    count = min(keep, tile.shape[1])
    if count < tile.shape[1]:
        values, positions = torch.topk(tile, count + 1, dim=1, sorted=True)
        last_kept, first_dropped = values[:, count - 1], values[:, count]
        # A tie among -inf entries is harmless: they all end up as (-inf, -1).
        ambiguous = ((last_kept == first_dropped) & (last_kept != float("-inf"))).nonzero().squeeze(1)
        values, positions = values[:, :count], positions[:, :count]
        if ambiguous.numel():
            exact_values, exact_positions = torch.sort(tile[ambiguous], dim=1, descending=True, stable=True)
            values[ambiguous] = exact_values[:, :count]
            positions[ambiguous] = exact_positions[:, :count]
    else:
        values, positions = tile, torch.arange(count, device=tile.device).expand(tile.shape[0], count)
        return values, positions + offset
    positions, order = positions.sort(dim=1)
    return values.gather(1, order), positions + offset


def _merge(
    best_scores: torch.Tensor,
    best_indices: torch.Tensor,
    new_scores: torch.Tensor,
    new_indices: torch.Tensor,
    keep: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a tile's picks into the running list, keeping (score desc, index asc) order.

    ``best_*`` is already in that order and holds only indices below the tile's; ``new_*`` is in index
    order. A stable descending sort of [best | new] therefore breaks every tie by the lower index.
    """
    scores = torch.cat([best_scores, new_scores], dim=1)
    indices = torch.cat([best_indices, new_indices], dim=1)
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    return scores[:, :keep], indices.gather(1, order[:, :keep])


# --------------------------------------------------------------------------------------------------
# Window mode: rules and rank window on a per-query candidate list


def select_candidates(
    scores: torch.Tensor,
    indices: torch.Tensor,
    *,
    rules: _Rules,
    range_min: int,
    range_max: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply the rules to candidate lists and keep the survivors ranked ``range_min .. range_max - 1``.

    Args:
        scores: [Q, W] candidate scores (raw, or rescored by a cross-encoder); not modified.
        indices: [Q, W] their corpus indices, -1 for an empty slot (its score is ignored).
        rules: from :func:`make_rules`.

    Returns:
        scores [Q, range_max - range_min], indices (int64, -1 where none left), removal counts.
    """
    scores = scores.masked_fill(indices < 0, float("-inf"))
    removed = rules.apply_(scores, indices)
    # Survivors by (score desc, index asc): sort by index, then a stable sort by score.
    by_index = torch.where(indices < 0, torch.iinfo(torch.long).max, indices).argsort(dim=1, stable=True)
    scores, indices = scores.gather(1, by_index), indices.gather(1, by_index)
    scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
    indices = indices.gather(1, order)
    width = range_max - range_min
    scores, indices = _pad_columns(scores[:, range_min:range_max], indices[:, range_min:range_max], width)
    indices = indices.masked_fill(scores == float("-inf"), -1)
    return scores, indices, removed


def make_rules(
    num_queries: int,
    *,
    positives: torch.Tensor | None = None,
    positive_scores: torch.Tensor | None = None,
    excluded: torch.Tensor | None = None,
    exclude_positives: bool = True,
    filters: CandidateFilters = CandidateFilters(),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> _Rules:
    """The rules for :func:`select_candidates` (shapes as in :func:`hard_negative_topk`).

    ``positive_scores`` is needed only when a margin is set.
    """
    positives = _index_matrix(positives, num_queries, device)
    if filters.uses_positive_scores and positive_scores is None and positives.shape[1] > 0:
        raise ValueError("the margins need positive_scores")
    hardest = _hardest_positive(positive_scores, positives, num_queries, dtype, device)
    return _Rules(positives, _index_matrix(excluded, num_queries, device), exclude_positives, hardest, filters)


# --------------------------------------------------------------------------------------------------
# Small helpers


def _dot(query_block: torch.Tensor, corpus_block: torch.Tensor) -> torch.Tensor:
    return torch.mm(query_block, corpus_block.transpose(0, 1))


def _index_matrix(indices: torch.Tensor | None, num_queries: int, device) -> torch.Tensor:
    if indices is None:
        return torch.empty((num_queries, 0), dtype=torch.long, device=device)
    return indices.to(device=device, dtype=torch.long)


# Scalars of one gathered block of positive rows in _pair_scores (4 MiB in float32).
_PAIR_SCORE_BLOCK_ELEMENTS = 1 << 20


def _pair_scores(queries, corpus, positives, score_block) -> torch.Tensor:
    """[Q, P] score of each (query, positive) pair; padding gets 0 (ignored later)."""
    safe = positives.clamp(min=0)
    if score_block is _dot:
        # In blocks of queries: the gathered positive rows are [rows, P, D], the size of the queries
        # themselves for the whole batch (30 MB at Q = 20,000, D = 384), twice with the product.
        # Each score is the same sum over D whatever the block.
        rows = max(1, _PAIR_SCORE_BLOCK_ELEMENTS // max(positives.shape[1] * queries.shape[1], 1))
        blocks = [(query_rows.unsqueeze(1) * corpus[indices]).sum(-1)
                  for query_rows, indices in zip(queries.split(rows), safe.split(rows))]
        return torch.cat(blocks) if blocks else queries.new_zeros(positives.shape)
    return torch.stack(
        [score_block(queries[i : i + 1], corpus[safe[i]]).squeeze(0) for i in range(queries.shape[0])]
    ).reshape(positives.shape)


def _hardest_positive(positive_scores, positives, num_queries, dtype, device) -> torch.Tensor:
    """[Q] lowest score among each query's positives; +inf for a query without one."""
    if positive_scores is None or positives.shape[1] == 0:
        return torch.full((num_queries,), float("inf"), dtype=dtype, device=device)
    positive_scores = positive_scores.to(device)
    return positive_scores.masked_fill(positives < 0, float("inf")).amin(dim=1)


def _pad_columns(scores: torch.Tensor, indices: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    missing = width - scores.shape[1]
    if missing <= 0:
        return scores, indices
    return (
        torch.cat([scores, scores.new_full((scores.shape[0], missing), float("-inf"))], dim=1),
        torch.cat([indices, indices.new_full((indices.shape[0], missing), -1)], dim=1),
    )
