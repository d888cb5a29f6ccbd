"""``embedplug.mining.topk_hard_negatives``: accepted input forms, checks with clear errors, devices."""

from __future__ import annotations

import math

import pytest
import torch

from embedplug.mining import REMOVAL_NAMES, search_hard_negatives, topk_hard_negatives, unique_texts


def embeddings(rows: int, dim: int = 8, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(rows, dim, generator=generator, dtype=dtype), dim=-1)


def full_matrix_answer(queries, corpus, k, positives):
    scores = queries @ corpus.T
    for query, row in enumerate(positives):
        scores[query, row] = -math.inf
    return torch.topk(scores, k, dim=1)


def test_positive_forms_give_the_same_answer():
    queries, corpus = embeddings(4), embeddings(30, seed=1)
    expected = full_matrix_answer(queries, corpus, 5, [[0], [1, 2], [3], [4]])
    for positives in (
        [[0], [1, 2], [3], [4]],
        torch.tensor([[0, -1], [1, 2], [3, -1], [4, -1]]),
        [[0, -1], [1, 2], [3], [4]],
    ):
        scores, indices = topk_hard_negatives(queries, corpus, 5, positives=positives)
        assert torch.equal(indices, expected.indices)
        torch.testing.assert_close(scores, expected.values)
    flat_scores, flat_indices = topk_hard_negatives(queries, corpus, 5, positives=torch.tensor([0, 1, 3, 4]))
    assert torch.equal(flat_indices, full_matrix_answer(queries, corpus, 5, [[0], [1], [3], [4]]).indices)
    _, without = topk_hard_negatives(queries, corpus, 5, positives=None)
    assert torch.equal(without, torch.topk(queries @ corpus.T, 5, dim=1).indices)


def test_search_reports_removals_by_rule():
    queries, corpus = embeddings(3), embeddings(40, seed=2)
    result = search_hard_negatives(queries, corpus, 4, positives=[0, 1, 2], max_score=0.2, min_score=-0.2)
    counts = dict(zip(REMOVAL_NAMES, result.removed.tolist()))
    scores = queries @ corpus.T
    scores[[0, 1, 2], [0, 1, 2]] = -math.inf
    assert counts["positives"] == 3
    assert counts["max_score"] == int((scores > 0.2).sum())
    assert counts["min_score"] == int(((scores < -0.2) & (scores > -math.inf)).sum())
    assert result.considered == 3 * 40


def test_half_precision_inputs_are_scored_in_float32():
    queries, corpus = embeddings(3).half(), embeddings(20, seed=3).half()
    scores, indices = topk_hard_negatives(queries, corpus, 2, positives=[0, 1, 2])
    assert scores.dtype == torch.float32
    expected = full_matrix_answer(queries.float(), corpus.float(), 2, [[0], [1], [2]])
    assert torch.equal(indices, expected.indices)


def test_unique_texts_maps_duplicates_to_one_row():
    unique, row_of = unique_texts(["a", "b", "a", "c", "b"])
    assert unique == ["a", "b", "c"]
    assert row_of == [0, 1, 0, 2, 1]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (dict(queries=[[1.0]]), TypeError, "queries must be a torch.Tensor"),
        (dict(queries=torch.ones(3)), ValueError, "queries must be 2-D"),
        (dict(corpus=torch.ones(5, 8, dtype=torch.long)), TypeError, "corpus must be a floating-point"),
        (dict(corpus=torch.ones(5, 7)), ValueError, "same embedding dimension"),
        (dict(corpus=torch.ones(5, 8, dtype=torch.float64)), TypeError, "convert one"),
        (dict(queries=torch.ones(0, 8)), ValueError, "no queries"),
        (dict(corpus=torch.ones(0, 8)), ValueError, "empty corpus"),
        (dict(corpus=torch.full((5, 8), math.nan)), ValueError, "NaN or infinite"),
        (dict(k=0), ValueError, "k must be at least 1"),
        (dict(k=2.0), TypeError, "k must be an integer"),
        (dict(k=True), TypeError, "k must be an integer"),
        (dict(range_min=-1), ValueError, "range_min must be at least 0"),
        (dict(range_max=2, range_min=2), ValueError, "range_min must be smaller than range_max"),
        (dict(k=3, range_max=3, range_min=1), ValueError, "does not fit the rank window"),
        (dict(positives=[0, 1]), ValueError, "one row per query (3)"),
        (dict(positives=[0, 1, 5]), IndexError, "corpus index 5, outside 0..4"),
        (dict(positives=[0, 1, -2]), IndexError, "corpus index -2"),
        (dict(positives=torch.tensor([0.0, 1.0, 2.0])), TypeError, "integer corpus indices"),
        (dict(positives=[[0], [1], ["x"]]), TypeError, "integer corpus indices"),
        (dict(excluded=[0, 9, 1]), IndexError, "excluded holds corpus index 9"),
        (dict(max_score="0.5"), TypeError, "max_score must be a finite real number"),
        (dict(min_score=math.nan), TypeError, "min_score must be a finite real number"),
        (dict(positives=[[0], [], [2]], absolute_margin=0.1), ValueError, "query 1 has none"),
        (dict(positives=None, relative_margin=0.1), ValueError, "query 0 has none"),
        (dict(positive_scores=torch.ones(2, 1)), ValueError, "must match positives' shape (3, 1)"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(change, error, message):
    arguments = dict(queries=torch.ones(3, 8), corpus=torch.ones(5, 8), k=1, positives=[0, 1, 2])
    arguments.update(change)
    queries, corpus, k = arguments.pop("queries"), arguments.pop("corpus"), arguments.pop("k")
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        topk_hard_negatives(queries, corpus, k, **arguments)


def test_inputs_on_two_devices_are_rejected():
    meta = torch.ones(5, 8, device="meta")
    with pytest.raises(ValueError, match="queries are on cpu but corpus on meta"):
        topk_hard_negatives(torch.ones(3, 8), meta, 1, positives=None)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    queries, corpus = embeddings(50, dim=32), embeddings(3000, dim=32, seed=5)
    positives = torch.arange(50).unsqueeze(1)
    options = dict(positives=positives, relative_margin=0.05, min_score=-0.5, range_min=1)
    cpu_scores, cpu_indices = topk_hard_negatives(queries, corpus, 7, **options)
    gpu_scores, gpu_indices = topk_hard_negatives(queries.cuda(), corpus.cuda(), 7, **options)
    assert gpu_indices.device.type == "cuda"
    # GEMM rounding differs between devices; the selection may differ only where scores are that close.
    torch.testing.assert_close(gpu_scores.cpu(), cpu_scores, rtol=1e-5, atol=1e-6)
    same = gpu_indices.cpu() == cpu_indices
    assert same.float().mean() > 0.99
