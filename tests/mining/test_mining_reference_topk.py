"""The streamed hard-negative top-k reference against a brute-force full-matrix oracle.

Embeddings are small integers in float64, so every score is exact and ties are common: the tests see
tie order, thresholds hit exactly, and tiles as small as one column.
"""

from __future__ import annotations

import math

import pytest
import torch
from brute_force_mining import RULES, brute_force_topk
from hypothesis import given, settings
from hypothesis import strategies as st

from embedplug.reference import hard_negative_topk as reference
from embedplug.reference.hard_negative_topk import REMOVAL_NAMES, hard_negative_topk


def integer_embeddings(rows: int, dim: int, seed: int, low: int = -2, high: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, high, (rows, dim), generator=generator).double()


def padded(rows: list[list[int]]) -> torch.Tensor:
    width = max((len(row) for row in rows), default=0)
    return torch.tensor([row + [-1] * (width - len(row)) for row in rows], dtype=torch.long).reshape(len(rows), width)


def assert_matches_oracle(queries, corpus, k, positives, tile_elements, **options):
    excluded = options.pop("excluded", None)
    result = hard_negative_topk(
        queries, corpus, k, positives=padded(positives), excluded=None if excluded is None else padded(excluded),
        tile_elements=tile_elements, **options,
    )
    scores, indices, removed, considered = brute_force_topk(
        queries, corpus, k, positives=positives, excluded=excluded, **options
    )
    assert result.indices.tolist() == indices
    assert result.scores.tolist() == scores
    assert dict(zip(REMOVAL_NAMES, result.removed.tolist())) == removed
    assert result.considered == considered
    assert result.scores.dtype == queries.dtype and result.indices.dtype == torch.long


@st.composite
def mining_problems(draw):
    num_queries = draw(st.integers(1, 7))
    num_corpus = draw(st.integers(1, 25))
    dim = draw(st.integers(1, 4))
    positives = [
        draw(st.lists(st.integers(0, num_corpus - 1), min_size=1, max_size=3)) for _ in range(num_queries)
    ]
    threshold = st.one_of(st.none(), st.sampled_from([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 4.0]))
    margin = st.one_of(st.none(), st.sampled_from([0.0, 0.05, 0.5, 1.0, 2.0, -1.0]))
    options = {
        "exclude_positives": draw(st.booleans()),
        "absolute_margin": draw(margin),
        "relative_margin": draw(margin),
        "max_score": draw(threshold),
        "min_score": draw(threshold),
    }
    if draw(st.booleans()):
        options["excluded"] = [draw(st.lists(st.integers(0, num_corpus - 1), max_size=2)) for _ in range(num_queries)]
    range_min = draw(st.integers(0, 4))
    if draw(st.booleans()):
        options["range_max"] = range_min + draw(st.integers(1, 8))
        k = draw(st.integers(1, options["range_max"] - range_min))
        if draw(st.booleans()):
            options["reserved_slots"] = draw(st.integers(0, 3))
    else:
        k = draw(st.integers(1, 30))  # often more than the candidates left
    options["range_min"] = range_min
    tile_elements = draw(st.sampled_from([1, 3, 12, 40, 1 << 22]))
    seed = draw(st.integers(0, 10_000))
    return num_queries, num_corpus, dim, positives, k, tile_elements, seed, options


@settings(max_examples=300, deadline=None)
@given(mining_problems())
def test_matches_brute_force_on_random_problems_with_ties(problem):
    num_queries, num_corpus, dim, positives, k, tile_elements, seed, options = problem
    queries = integer_embeddings(num_queries, dim, seed)
    corpus = integer_embeddings(num_corpus, dim, seed + 1)
    assert_matches_oracle(queries, corpus, k, positives, tile_elements, **options)


@pytest.mark.parametrize("tile_elements", [1, 5, 64, 1 << 22])
def test_all_equal_scores_come_back_in_index_order(tile_elements):
    queries = torch.ones(3, 4)
    corpus = torch.ones(50, 4)
    result = hard_negative_topk(queries, corpus, 7, positives=padded([[3], [0, 49], [10]]), tile_elements=tile_elements)
    assert result.indices.tolist() == [[0, 1, 2, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6]]
    assert (result.scores == 4).all()


def test_tie_at_the_selection_boundary_keeps_the_lower_indices():
    # Scores per corpus row: 5 at rows 40 and 7, then a run of 3s: the two 3s kept must be rows 0 and 2.
    corpus_scores = torch.full((60,), 3.0)
    corpus_scores[[7, 40]] = 5.0
    corpus_scores[1] = 1.0
    corpus = corpus_scores.unsqueeze(1)
    queries = torch.ones(1, 1)
    for tile_elements in (1, 4, 16, 1 << 22):
        result = hard_negative_topk(queries, corpus, 4, tile_elements=tile_elements)
        assert result.indices.tolist() == [[7, 40, 0, 2]], tile_elements
        assert result.scores.tolist() == [[5.0, 5.0, 3.0, 3.0]]


def test_k_larger_than_the_candidates_left_pads_with_minus_inf_and_minus_one():
    queries = integer_embeddings(1, 3, seed=1)
    corpus = integer_embeddings(4, 3, seed=2)
    result = hard_negative_topk(queries, corpus, 6, positives=padded([[2]]))
    assert result.indices[0, 3:].tolist() == [-1, -1, -1]
    assert result.scores[0, 3:].tolist() == [-math.inf] * 3
    assert sorted(result.indices[0, :3].tolist()) == [0, 1, 3]


def test_no_positives_and_no_filters_is_plain_top_k():
    queries = torch.randn(5, 8, dtype=torch.float64)
    corpus = torch.randn(30, 8, dtype=torch.float64)
    result = hard_negative_topk(queries, corpus, 4, tile_elements=16)
    expected = torch.topk(queries @ corpus.T, 4, dim=1)  # continuous scores: no ties
    assert torch.equal(result.indices, expected.indices)
    torch.testing.assert_close(result.scores, expected.values, rtol=1e-12, atol=1e-12)
    assert result.removed.tolist() == [0] * len(REMOVAL_NAMES)


def test_removal_counts_attribute_each_candidate_to_the_first_rule():
    # One query, one dimension: scores are the corpus values. Positive at row 0 (score 0.9).
    corpus = torch.tensor([[0.9], [0.95], [0.88], [0.8], [0.5], [0.1], [0.7]], dtype=torch.float64)
    queries = torch.ones(1, 1, dtype=torch.float64)
    result = hard_negative_topk(
        queries, corpus, 3, positives=padded([[0]]), excluded=padded([[6]]), absolute_margin=0.05,
        max_score=0.85, min_score=0.2,
    )
    # 0.95 and 0.88 are within 0.05 of the positive (absolute_margin); 0.8 passes max_score 0.85 but
    # nothing else is above it; 0.1 is below min_score; 0.7 is excluded.
    counts = dict(zip(REMOVAL_NAMES, result.removed.tolist()))
    assert counts == {
        "excluded": 1, "positives": 1, "absolute_margin": 2, "relative_margin": 0, "max_score": 0, "min_score": 1,
    }
    assert result.indices.tolist() == [[3, 4, -1]]


def test_window_mode_counts_only_the_raw_window_and_keeps_its_survivors():
    # Raw order: rows 0 (positive), 1, 2, 3, 4; range_max=2 with one reserved slot: window = rows 0..2.
    corpus = torch.tensor([[10.0], [9.0], [8.0], [7.0], [6.0]])
    queries = torch.ones(1, 1)
    result = hard_negative_topk(queries, corpus, 2, positives=padded([[0]]), range_max=2, max_score=8.5)
    assert result.indices.tolist() == [[2, -1]]  # row 1 removed by max_score; row 3 is outside the window
    assert dict(zip(REMOVAL_NAMES, result.removed.tolist()))["max_score"] == 1
    assert result.considered == 3


def test_negative_positive_score_relative_margin_uses_its_magnitude():
    # sentence-transformers #3819: threshold p - |p| * m, so for p = -0.5 and m = 0.1 it is -0.55.
    corpus = torch.tensor([[-0.5], [-0.52], [-0.56], [-0.6]], dtype=torch.float64)
    queries = torch.ones(1, 1, dtype=torch.float64)
    result = hard_negative_topk(queries, corpus, 3, positives=padded([[0]]), relative_margin=0.1)
    assert result.indices.tolist() == [[2, 3, -1]]


def test_positive_scores_given_override_the_dot_products():
    corpus = torch.tensor([[0.9], [0.8], [0.7]], dtype=torch.float64)
    queries = torch.ones(1, 1, dtype=torch.float64)
    base = hard_negative_topk(queries, corpus, 2, positives=padded([[0]]), absolute_margin=0.0)
    assert base.indices.tolist() == [[1, 2]]
    lowered = hard_negative_topk(
        queries, corpus, 2, positives=padded([[0]]), positive_scores=torch.tensor([[0.75]], dtype=torch.float64),
        absolute_margin=0.0,
    )
    assert lowered.indices.tolist() == [[2, -1]]


def test_hardest_positive_sets_the_margin():
    corpus = torch.tensor([[0.9], [0.6], [0.85], [0.5]], dtype=torch.float64)
    queries = torch.ones(1, 1, dtype=torch.float64)
    result = hard_negative_topk(queries, corpus, 2, positives=padded([[0, 1]]), absolute_margin=0.0)
    assert result.indices.tolist() == [[3, -1]]  # 0.85 > 0.6, the lower of the two positives


def test_similarity_callable_streams_a_non_gemm_score():
    queries = torch.randn(4, 3, dtype=torch.float64)
    corpus = torch.randn(20, 3, dtype=torch.float64)

    def negative_l1(a, b):
        return -torch.cdist(a, b, p=1.0)

    result = hard_negative_topk(queries, corpus, 3, positives=padded([[0]] * 4), similarity=negative_l1, tile_elements=7)
    full = negative_l1(queries, corpus)
    full[:, 0] = -math.inf
    expected = torch.topk(full, 3, dim=1)
    assert torch.equal(result.indices, expected.indices)


def test_rules_never_write_into_the_inputs():
    queries = integer_embeddings(3, 2, seed=4)
    corpus = integer_embeddings(9, 2, seed=5)
    before = (queries.clone(), corpus.clone())
    hard_negative_topk(queries, corpus, 2, positives=padded([[0], [1], [2]]), max_score=0.0)
    assert torch.equal(queries, before[0]) and torch.equal(corpus, before[1])


def test_rule_names_match_the_oracle():
    assert REMOVAL_NAMES == RULES


# --------------------------------------------------------------------------------------------------
# Memory: the streamed search holds one tile, never the Q x C matrix


def test_tiles_respect_the_element_bound(monkeypatch):
    num_queries, num_corpus, dim, tile_elements = 2000, 50_000, 64, 1 << 20
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(num_queries, dim, generator=generator)
    corpus = torch.randn(num_corpus, dim, generator=generator)
    corpus[:num_queries] = queries + 0.5 * corpus[:num_queries]  # query i's positive is corpus row i
    shapes = []
    real_dot = reference._dot

    def spy(query_block, corpus_block):
        tile = real_dot(query_block, corpus_block)
        shapes.append(tuple(tile.shape))
        return tile

    monkeypatch.setattr(reference, "_dot", spy)
    result = hard_negative_topk(
        queries, corpus, 10, positives=torch.arange(num_queries).unsqueeze(1), relative_margin=0.05,
        tile_elements=tile_elements,
    )
    assert max(rows * columns for rows, columns in shapes) <= tile_elements
    assert sum(rows * columns for rows, columns in shapes) == num_queries * num_corpus  # every pair scored once
    assert result.indices.shape == (num_queries, 10)
    # Spot-check a few queries against the full rows.
    for query in (0, 777, 1999):
        row = corpus @ queries[query]
        hardest = row[query].item()
        row[query] = -math.inf
        row[row > hardest - abs(hardest) * 0.05] = -math.inf
        assert (row > -math.inf).sum() > 10
        assert result.indices[query].tolist() == torch.topk(row, 10).indices.tolist()


MEMORY_SCRIPT = r"""
import resource, sys, torch
torch.set_num_threads(1)
from embedplug.reference.hard_negative_topk import hard_negative_topk
generator = torch.Generator().manual_seed(0)
queries = torch.randn(2000, 64, generator=generator)
corpus = torch.randn(50000, 64, generator=generator)
positives = torch.arange(2000).unsqueeze(1)
hard_negative_topk(queries[:8], corpus[:4096], 10, positives=positives[:8] % 4096)  # warm up allocator and kernels
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
hard_negative_topk(queries, corpus, 10, positives=positives, relative_margin=0.05, max_score=0.9)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


def test_peak_memory_stays_far_below_the_score_matrix(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "measure.py"
    script.write_text(MEMORY_SCRIPT)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    environment["PYTHONPATH"] = root + os.pathsep + environment.get("PYTHONPATH", "")
    output = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment, check=True)
    growth = int(output.stdout.strip().splitlines()[-1])
    score_matrix = 2000 * 50_000 * 4  # 400 MB: what a full Q x C float32 matrix would add
    # One 16 MiB tile plus its epilogue temporaries (a few tiles' worth) and the [Q, k] lists.
    assert growth < 128 * 2**20, f"peak resident memory grew by {growth / 2**20:.0f} MiB"
    assert growth < score_matrix / 3
