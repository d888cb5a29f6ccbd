"""``embedplug::hard_negative_topk``: dataset-scale hard-negative mining's top-k, fused with the GEMM.

Per query, the ``k`` best corpus rows that survive sentence-transformers' false-negative filters,
with the removal counts per rule. The semantics (open and window mode, filter order, exact
comparisons, ties, padding) are :mod:`embedplug.reference.hard_negative_topk`'s, which is also the
fallback and the oracle. Not differentiable: mining picks rows, a loss recomputes what it needs.
"""

from __future__ import annotations

import torch

from embedplug.ops import layer
from embedplug.ops.samples import RAGGED_ROWS
from embedplug.ops.spec import Count, Embeddings, Flag, IndexMatrix, OpSpec, Real, Sample, Scores
from embedplug.reference import hard_negative_topk as reference

REMOVAL_RULES = len(reference.REMOVAL_NAMES)


def _fake(queries, corpus, k, positives, positive_scores, excluded, exclude_positives, absolute_margin,
          relative_margin, max_score, min_score, range_min, range_max, reserved_slots):
    rows = queries.shape[0]
    return (
        queries.new_empty((rows, k)),
        queries.new_empty((rows, k), dtype=torch.long),
        queries.new_empty((REMOVAL_RULES,), dtype=torch.long),
    )


def _validate(args, caller):
    queries, _corpus, k, positives, positive_scores, excluded = args[:6]
    range_min, range_max = args[11], args[12]
    for name, matrix in (("positives", positives), ("excluded", excluded)):
        if matrix.shape[0] != queries.shape[0]:
            raise ValueError(
                f"{caller}: {name} must have one row per query ({queries.shape[0]}), got shape {tuple(matrix.shape)}"
            )
    if positive_scores.shape != positives.shape:
        raise ValueError(
            f"{caller}: positive_scores must match positives' shape {tuple(positives.shape)}, got "
            f"{tuple(positive_scores.shape)}"
        )
    if range_max is not None:
        if range_min >= range_max:
            raise ValueError(f"{caller}: range_min must be smaller than range_max, got {range_min} and {range_max}")
        if k > range_max - range_min:
            raise ValueError(
                f"{caller}: k={k} does not fit the rank window: only range_max - range_min = "
                f"{range_max - range_min} candidates are kept"
            )


def _reduce(inputs, outputs):
    scores, indices = outputs[0], outputs[1]
    return scores.masked_fill(indices < 0, 0).sum()


# --------------------------------------------------------------------------------------------------
# Conformance samples. Integer-valued embeddings make every score, sum and threshold exact in both
# dtypes and in any GEMM blocking, so the fused indices and counts must equal the reference's even in
# float32, and they are full of exact ties (decided by the lower index). The float64-only random
# samples cover continuous data.


def _integer_rows(generator, rows, dim):
    return torch.randint(-2, 3, (rows, dim), generator=generator, dtype=torch.int64).double()


def _args(queries, corpus, k, *, positives=None, excluded=None, exclude_positives=True, absolute_margin=None,
          relative_margin=None, max_score=None, min_score=None, range_min=0, range_max=None, reserved_slots=None,
          positive_scores=None, dtype=torch.float64):
    rows = queries.shape[0]
    positives = torch.empty((rows, 0), dtype=torch.long) if positives is None else positives
    excluded = torch.empty((rows, 0), dtype=torch.long) if excluded is None else excluded
    if positive_scores is None:
        positive_scores = reference.dot_pair_scores(queries, corpus, positives)
    return (
        queries.to(dtype), corpus.to(dtype), k, positives, positive_scores.to(dtype), excluded, exclude_positives,
        absolute_margin, relative_margin, max_score, min_score, range_min, range_max, reserved_slots,
    )


def _listed(generator, rows, num_corpus, width):
    """[rows, width] random corpus indices with some -1 padding."""
    listed = torch.randint(0, num_corpus, (rows, width), generator=generator)
    padding = torch.rand((rows, width), generator=generator) < 0.25
    return listed.masked_fill(padding, -1)


def _samples(dtype):
    g = torch.Generator().manual_seed(21)
    queries, corpus = _integer_rows(g, 6, 6), _integer_rows(g, 50, 6)
    positives = _listed(g, 6, 50, 2)
    positives[:, 0] = torch.arange(6) * 7  # every query has a positive (the margins need one)
    excluded = _listed(g, 6, 50, 2)
    excluded[0, 1] = positives[0, 0]  # listed twice: counted once, as excluded
    # Given positive scores near the top of the score range, so that the margins remove the top few
    # candidates and leave the rest (a random positive's own score would remove nearly everything).
    high = torch.randint(5, 9, positives.shape, generator=g).double()
    every_filter = dict(absolute_margin=1.0, relative_margin=0.25, max_score=10.0, min_score=-8.0, positive_scores=high)
    yield Sample(_args(queries, corpus, 4, positives=positives, excluded=excluded, range_min=1, dtype=dtype,
                       **every_filter), "integer scores with ties, open mode, every filter")
    yield Sample(_args(queries, corpus, 3, positives=positives, excluded=excluded, range_min=2, range_max=12,
                       dtype=dtype, **every_filter), "integer scores with ties, window mode, every filter")
    yield Sample(_args(queries, corpus, 5, positives=positives, excluded=excluded, exclude_positives=False,
                       range_max=5, reserved_slots=1, absolute_margin=0.0, positive_scores=high, dtype=dtype),
                 "window mode, reserved_slots given, positives kept")
    duplicated = corpus.clone()
    duplicated[10:20] = corpus[0]
    yield Sample(_args(queries, duplicated, 6, positives=positives, dtype=dtype),
                 "exact duplicate rows (integer, ties by index)")
    yield Sample(_args(queries, corpus, 3, positives=positives, excluded=excluded, max_score=-100.0, dtype=dtype),
                 "all candidates filtered")
    small = corpus[:12]
    yield Sample(_args(queries, small, 10, positives=torch.where(positives >= 0, positives % 12, -1), excluded=_listed(g, 6, 12, 4), dtype=dtype,
                       min_score=-2.0), "k larger than the survivors")
    yield Sample(_args(queries, corpus, 4, range_min=3, min_score=0.0, dtype=dtype),
                 "open mode with range_min, no positives")
    yield Sample(_args(queries[:1], corpus, 5, positives=positives[:1], excluded=excluded[:1], relative_margin=0.5,
                       positive_scores=high[:1], dtype=dtype), "N = 1")
    # More query rows than one CPU query block (256) and corpus rows than one tile (1024), neither a multiple.
    many_queries, many_corpus = _integer_rows(g, RAGGED_ROWS, 4), _integer_rows(g, 2100, 4)
    many_positives = _listed(g, RAGGED_ROWS, 2100, 3)
    many_positives[:, 0] = torch.arange(RAGGED_ROWS) * 7
    many_high = torch.randint(8, 13, many_positives.shape, generator=g).double()
    yield Sample(_args(many_queries, many_corpus, 5, positives=many_positives, excluded=_listed(g, RAGGED_ROWS, 2100, 2),
                       absolute_margin=0.5, max_score=9.0, min_score=-7.0, range_min=2, positive_scores=many_high,
                       dtype=dtype), "ragged last tile, open mode")
    yield Sample(_args(many_queries, many_corpus, 4, positives=many_positives, relative_margin=0.25, range_max=40,
                       positive_scores=many_high, dtype=dtype), "ragged last tile, window mode")
    wide = _integer_rows(g, 6, 12)
    args = list(_args(wide[:, ::2], corpus, 4, positives=positives, excluded=excluded, dtype=dtype, **every_filter))
    args[0] = wide.to(dtype)[:, ::2]
    args[1] = corpus.to(dtype).t().contiguous().t()
    args[3] = torch.cat([positives, positives], 1)[:, ::2]
    yield Sample(tuple(args), "non-contiguous")
    if dtype == torch.float64:
        unit = torch.nn.functional.normalize
        random_queries, random_corpus = unit(torch.randn(40, 16, generator=g, dtype=dtype), dim=1), unit(
            torch.randn(3000, 16, generator=g, dtype=dtype), dim=1)
        random_positives = _listed(g, 40, 3000, 3)
        random_positives[:, 0] = torch.arange(40) * 11
        random_high = 0.5 + 0.3 * torch.rand(random_positives.shape, generator=g, dtype=dtype)
        yield Sample(_args(random_queries, random_corpus, 8, positives=random_positives,
                           excluded=_listed(g, 40, 3000, 2), relative_margin=0.05, max_score=0.6, min_score=-0.5,
                           range_min=1, positive_scores=random_high, dtype=dtype), "random, open mode")
        yield Sample(_args(random_queries, random_corpus, 8, positives=random_positives, absolute_margin=0.1,
                           range_max=30, positive_scores=random_high + 0.25, dtype=dtype), "random, window mode")


HARD_NEGATIVE_TOPK = layer.declare(OpSpec(
    name="hard_negative_topk",
    args=(
        Embeddings("queries", differentiable=False),
        Embeddings("corpus", same_dim_as="queries", differentiable=False),
        Count("k", minimum=1),
        IndexMatrix("positives"),
        Scores("positive_scores"),
        IndexMatrix("excluded"),
        Flag("exclude_positives"),
        Real("absolute_margin", optional=True),
        Real("relative_margin", optional=True),
        Real("max_score", optional=True),
        Real("min_score", optional=True),
        Count("range_min"),
        Count("range_max", minimum=1, optional=True),
        Count("reserved_slots", optional=True),
    ),
    reference=reference.hard_negative_topk_op,
    fake=_fake,
    outputs=3,
    reduce=_reduce,
    samples=_samples,
    validate=_validate,
))


def hard_negative_topk(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    positives: torch.Tensor,
    positive_scores: torch.Tensor,
    excluded: torch.Tensor,
    exclude_positives: bool = True,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    range_min: int = 0,
    range_max: int | None = None,
    reserved_slots: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` best surviving corpus rows per query, fused with the similarity GEMM.

    No [Q, C] matrix: per block of queries, one GEMM per corpus tile into a bounded buffer, each score
    filtered and folded into a running ranked list per query. Not differentiable (inputs are detached).
    Embeddings must be finite (:func:`embedplug.mining.topk_hard_negatives` checks it): a NaN score
    never enters the kernels' lists, where the reference's sort would rank it first.

    Args:
        queries: [Q, D] floating tensor; corpus: [C, D] on the same device (float16/bfloat16 are scored
            in float32; corpus takes the queries' dtype). Scores are ``queries @ corpus.T``.
        k: results per query (>= 1; at most ``range_max - range_min`` in window mode).
        positives: [Q, P] integer corpus indices (-1 padding); positive_scores: [Q, P] their scores,
            which set the margins (computed in the queries' dtype). excluded: [Q, E] more indices to drop.
        exclude_positives, absolute_margin, relative_margin, max_score, min_score, range_min,
        range_max, reserved_slots: as :func:`embedplug.reference.hard_negative_topk.hard_negative_topk`.

    Returns:
        scores [Q, k] (the queries' dtype), indices [Q, k] int64 (best first, ties by the lower index,
        ``(-inf, -1)`` where fewer survived), removed [6] int64 (per rule of ``REMOVAL_NAMES``).
    """
    return layer.call(
        HARD_NEGATIVE_TOPK, queries, corpus, k, positives, positive_scores, excluded, exclude_positives,
        absolute_margin, relative_margin, max_score, min_score, range_min, range_max, reserved_slots,
    )
