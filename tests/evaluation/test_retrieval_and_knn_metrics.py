"""Retrieval recall/MRR and kNN accuracy against brute-force definitions on small inputs."""

from __future__ import annotations

import pytest
import torch

from embedplug.evaluation.knn import knn_accuracy
from embedplug.evaluation.retrieval import retrieval_metrics


def unit(rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float), dim=1)


def test_retrieval_ranks_on_a_hand_made_example():
    corpus = unit([[1, 0], [0, 1], [-1, 0]])
    queries = unit([[1, 0.1], [1, 0.2], [0.1, 1]])
    # query 0 -> relevant 0 (rank 1), query 1 -> relevant 1 (rank 2), query 2 -> relevant 2 (rank 3)
    metrics = retrieval_metrics(queries, corpus, torch.tensor([0, 1, 2]), ks=(1, 2))
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@2"] == pytest.approx(2 / 3)
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_mrr_ignores_ranks_beyond_the_cutoff():
    corpus = unit([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1]])
    queries = unit([[1, 0]])
    metrics = retrieval_metrics(queries, corpus, torch.tensor([3]), ks=(1,), mrr_at=3)
    assert metrics["mrr@3"] == 0.0


def test_retrieval_matches_a_sort_based_reference_in_chunks():
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(57, 8, generator=generator), dim=1)
    corpus = torch.nn.functional.normalize(torch.randn(40, 8, generator=generator), dim=1)
    relevant = torch.randint(0, 40, (57,), generator=generator)
    metrics = retrieval_metrics(queries, corpus, relevant, chunk_size=7)
    order = (queries @ corpus.T).argsort(dim=1, descending=True)
    rank = (order == relevant[:, None]).float().argmax(dim=1)
    assert metrics["recall@1"] == pytest.approx((rank < 1).float().mean().item())
    assert metrics["recall@10"] == pytest.approx((rank < 10).float().mean().item())
    expected_mrr = torch.where(rank < 10, 1 / (rank + 1.0), torch.zeros(57)).mean().item()
    assert metrics["mrr@10"] == pytest.approx(expected_mrr)


def test_retrieval_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        retrieval_metrics(unit([[1, 0]]), unit([[1, 0]]), torch.tensor([0, 0]))


def test_knn_at_1_on_a_hand_made_example():
    references = unit([[1, 0], [0, 1], [-1, 0]])
    reference_labels = torch.tensor([0, 1, 2])
    queries = unit([[1, 0.1], [0.1, 1], [-1, 0.1], [1, -0.1]])
    accuracy = knn_accuracy(queries, torch.tensor([0, 1, 0, 0]), references, reference_labels, k=1)
    assert accuracy == pytest.approx(3 / 4)


def test_knn_majority_vote_with_k_3():
    references = unit([[1, 0], [0.9, 0.1], [0.8, 0.3], [0, 1]])
    reference_labels = torch.tensor([5, 7, 7, 5])
    queries = unit([[1, 0]])
    assert knn_accuracy(queries, torch.tensor([7]), references, reference_labels, k=3) == 1.0
    assert knn_accuracy(queries, torch.tensor([5]), references, reference_labels, k=1) == 1.0


def test_knn_rejects_k_larger_than_the_reference_set():
    with pytest.raises(ValueError, match="k=3"):
        knn_accuracy(unit([[1, 0]]), torch.tensor([0]), unit([[1, 0]]), torch.tensor([0]), k=3)
