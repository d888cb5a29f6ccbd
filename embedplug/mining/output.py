"""The mined negatives as dataset columns, in sentence-transformers' four output formats.

Mirrors ``sentence_transformers.util.mine_hard_negatives`` line for line in what it produces (6.2 and
6.3 build the same columns), so that ``Dataset.from_dict`` gives an identical dataset.
"""

from __future__ import annotations

import dataclasses

import torch

FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")


@dataclasses.dataclass
class MinedPairs:
    """Everything the formats need, per unique query (Q of them) and per (query, positive) pair (R rows).

    ``queries`` [Q] unique query texts; ``corpus`` the de-duplicated corpus; ``positive_indices`` [Q]
    lists of corpus rows; ``all_queries`` / ``positives`` [R] texts in query order; ``positive_scores``
    [R]; ``indices`` / ``negative_scores`` [Q, n] chosen negatives, best first, -inf where none.
    """

    queries: list[str]
    corpus: list[str]
    positive_indices: list[list[int]]
    all_queries: list[str]
    positives: list[str]
    positive_scores: torch.Tensor
    indices: torch.Tensor
    negative_scores: torch.Tensor
    num_negatives: int
    dataset_rows: int

    @property
    def positives_per_query(self) -> list[int]:
        return [len(row) for row in self.positive_indices]


@dataclasses.dataclass
class FormattedOutput:
    """Columns for ``Dataset.from_dict``, plus what the summary reports: the scores of the negatives
    that made it into the output, positive-minus-negative differences, and the rows that could have
    been produced with enough negatives."""

    columns: dict
    negative_scores: torch.Tensor
    difference_scores: torch.Tensor
    maximum_possible_samples: int


def format_output(
    mined: MinedPairs, output_format: str, output_scores: bool, anchor_column: str, positive_column: str
) -> FormattedOutput:
    build = {
        "triplet": _triplets,
        "n-tuple": _n_tuples,
        "labeled-pair": _labeled_pairs,
        "labeled-list": _labeled_lists,
    }[output_format]
    return build(mined, output_scores, anchor_column, positive_column)


def _per_pair(mined: MinedPairs) -> tuple[torch.Tensor, torch.Tensor]:
    """indices and negative_scores repeated once per positive of each query: [R, n]."""
    repeats = torch.tensor(mined.positives_per_query, device=mined.indices.device)
    return mined.indices.repeat_interleave(repeats, dim=0), mined.negative_scores.repeat_interleave(repeats, dim=0)


def _positive_scores_per_negative(mined: MinedPairs, keep: torch.Tensor) -> torch.Tensor:
    return mined.positive_scores.repeat(mined.num_negatives, 1).T[keep]


def _triplets(mined, output_scores, anchor_column, positive_column) -> FormattedOutput:
    indices, negative_scores = _per_pair(mined)
    keep = negative_scores != -float("inf")
    rows = keep.nonzero(as_tuple=True)[0].tolist()
    indices, negative_scores = indices[keep], negative_scores[keep]
    positive_scores = _positive_scores_per_negative(mined, keep)
    columns = {anchor_column: [], positive_column: [], "negative": []}
    if output_scores:
        columns["scores"] = []
    for row, negative, positive_score, negative_score in zip(
        rows, indices.tolist(), positive_scores.tolist(), negative_scores.tolist()
    ):
        columns[anchor_column].append(mined.all_queries[row])
        columns[positive_column].append(mined.positives[row])
        columns["negative"].append(mined.corpus[negative])
        if output_scores:
            columns["scores"].append([positive_score, negative_score])
    return FormattedOutput(columns, negative_scores, positive_scores - negative_scores, keep.numel())


def _labeled_pairs(mined, output_scores, anchor_column, positive_column) -> FormattedOutput:
    columns = {anchor_column: [], positive_column: []}  # the second column holds negatives too
    value_column = "score" if output_scores else "label"
    columns[value_column] = []
    pair = 0
    for query, positive_rows in enumerate(mined.positive_indices):
        for positive in positive_rows:
            columns[anchor_column].append(mined.queries[query])
            columns[positive_column].append(mined.corpus[positive])
            columns[value_column].append(mined.positive_scores[pair].item() if output_scores else 1)
            pair += 1
        for negative, score in zip(mined.indices[query], mined.negative_scores[query]):
            if score == -float("inf"):
                continue
            columns[anchor_column].append(mined.queries[query])
            columns[positive_column].append(mined.corpus[negative])
            columns[value_column].append(score.item() if output_scores else 0)
    _, negative_scores = _per_pair(mined)
    keep = negative_scores != -float("inf")
    negative_scores = negative_scores[keep]
    maximum = len(mined.queries) * mined.num_negatives + mined.dataset_rows
    return FormattedOutput(columns, negative_scores, _positive_scores_per_negative(mined, keep) - negative_scores, maximum)


def _n_tuples(mined, output_scores, anchor_column, positive_column) -> FormattedOutput:
    indices, negative_scores = _per_pair(mined)
    keep = (negative_scores != -float("inf")).all(dim=1)  # only rows with every negative found
    negative_scores, indices = negative_scores[keep], indices[keep]
    kept_rows = keep.tolist()
    columns = {
        anchor_column: [query for query, kept in zip(mined.all_queries, kept_rows) if kept],
        positive_column: [positive for positive, kept in zip(mined.positives, kept_rows) if kept],
        **{
            f"negative_{i}": [mined.corpus[negative] for negative in column]
            for i, column in enumerate(indices.T.tolist(), start=1)
        },
    }
    if output_scores:
        columns["scores"] = torch.cat([mined.positive_scores[keep].unsqueeze(-1), negative_scores], dim=1).tolist()
    negative_scores = negative_scores.flatten()
    difference = _positive_scores_per_negative(mined, keep).flatten() - negative_scores
    return FormattedOutput(columns, negative_scores, difference, keep.size(0))


def _labeled_lists(mined, output_scores, anchor_column, positive_column) -> FormattedOutput:
    indices, negative_scores = _per_pair(mined)
    keep = negative_scores != -float("inf")
    has_any = keep.any(dim=1).tolist()
    columns = {
        anchor_column: [query for query, any_kept in zip(mined.all_queries, has_any) if any_kept],
        positive_column: [
            [mined.positives[row]] + [mined.corpus[index] for kept, index in zip(keep_row, index_row) if kept]
            for row, (keep_row, index_row, any_kept) in enumerate(zip(keep.tolist(), indices.tolist(), has_any))
            if any_kept
        ],
    }
    if output_scores:
        columns["scores"] = [
            [mined.positive_scores[row].item()] + negative_scores[row][keep_row].tolist()
            for row, (keep_row, any_kept) in enumerate(zip(keep, has_any))
            if any_kept
        ]
    else:
        columns["labels"] = [[1] + [0] * int(keep_row.sum()) for keep_row, any_kept in zip(keep, has_any) if any_kept]
    negative_scores = negative_scores[keep]
    difference = _positive_scores_per_negative(mined, keep) - negative_scores
    return FormattedOutput(columns, negative_scores, difference, keep.size(0))
