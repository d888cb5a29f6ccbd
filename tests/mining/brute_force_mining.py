"""A brute-force oracle for hard-negative top-k: the full score matrix and one Python loop per query.

Written from sentence-transformers' rules, independently of embedplug's streaming code: rank every
corpus row by (score desc, index asc), cut the raw window, drop excluded rows, positives and filtered
rows in sentence-transformers' order (counting each removal once, under the first rule that applies),
then take the rank window of the survivors.
"""

from __future__ import annotations

import math

import torch

RULES = ("excluded", "positives", "absolute_margin", "relative_margin", "max_score", "min_score")


def brute_force_topk(
    queries: torch.Tensor,
    corpus: torch.Tensor,
    k: int,
    *,
    positives: list[list[int]],
    excluded: list[list[int]] | None = None,
    positive_scores: list[list[float]] | None = None,
    exclude_positives: bool = True,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    range_min: int = 0,
    range_max: int | None = None,
    reserved_slots: int | None = None,
):
    """Returns (scores [Q][k] floats, indices [Q][k] ints, removed {rule: count}, considered)."""
    scores = (queries @ corpus.T).tolist()
    num_corpus = corpus.shape[0]
    excluded = excluded or [[] for _ in positives]
    if reserved_slots is None:
        reserved_slots = max((len(row) for row in positives), default=0) + max((len(row) for row in excluded), default=0)
    removed = dict.fromkeys(RULES, 0)
    all_scores, all_indices, considered = [], [], 0
    for query, row in enumerate(scores):
        order = sorted(range(num_corpus), key=lambda j: (-row[j], j))
        if range_max is not None:
            order = order[: range_max + reserved_slots]
        considered += len(order)
        own = [p for p in positives[query] if p >= 0]
        if positive_scores is not None:
            own_scores = [s for p, s in zip(positives[query], positive_scores[query]) if p >= 0]
        else:
            own_scores = [float(queries[query] @ corpus[p]) for p in own]
        hardest = min(own_scores) if own_scores else math.inf
        survivors = []
        for j in order:
            score = row[j]
            if j in excluded[query]:
                removed["excluded"] += 1
            elif exclude_positives and j in own:
                removed["positives"] += 1
            elif absolute_margin is not None and own and score + absolute_margin > hardest:
                removed["absolute_margin"] += 1
            elif relative_margin is not None and own and score > hardest - abs(hardest) * relative_margin:
                removed["relative_margin"] += 1
            elif max_score is not None and score > max_score:
                removed["max_score"] += 1
            elif min_score is not None and score < min_score:
                removed["min_score"] += 1
            else:
                survivors.append(j)
        window = survivors[range_min:] if range_max is None else survivors[range_min:range_max]
        chosen = window[:k]
        all_indices.append(chosen + [-1] * (k - len(chosen)))
        all_scores.append([row[j] for j in chosen] + [-math.inf] * (k - len(chosen)))
    return all_scores, all_indices, removed, considered
