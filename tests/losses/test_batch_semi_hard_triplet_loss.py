"""embedplug.losses.BatchSemiHardTripletLoss is a drop-in for sentence-transformers' class of the same name."""

from __future__ import annotations

import pytest
import torch
from _support import loss_and_grad

from embedplug.losses import BatchSemiHardTripletLoss

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
STBatchSemiHardTripletLoss = st_losses.BatchSemiHardTripletLoss
STDistance = st_losses.BatchHardTripletLossDistanceFunction


def test_without_a_farther_negative_the_farthest_one_is_used():
    # Positive at distance 3, negatives at 1 and 2: no semi-hard negative, ST falls back to the
    # largest negative distance (2): loss (3 - 2) + 1 for anchor 0.
    embeddings = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    expected_loss, expected_grad = loss_and_grad(STBatchSemiHardTripletLoss, embeddings, labels, STDistance.euclidean_distance, margin=1)
    loss, grad = loss_and_grad(BatchSemiHardTripletLoss, embeddings, labels, STDistance.euclidean_distance, margin=1)
    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(grad, expected_grad)


def test_masked_maximum_helper_matches_sentence_transformers():
    generator = torch.Generator().manual_seed(1)
    data = torch.randn(6, 6, generator=generator)
    mask = torch.rand(6, 6, generator=generator) > 0.5
    torch.testing.assert_close(
        BatchSemiHardTripletLoss._masked_maximum(data, mask), STBatchSemiHardTripletLoss._masked_maximum(data, mask)
    )


def test_loss_specific_attributes_match():
    # Signature, config and citation: test_labelled_losses_contract.py.
    model = torch.nn.Linear(2, 2)
    ours, theirs = BatchSemiHardTripletLoss(model, margin=0.25), STBatchSemiHardTripletLoss(model, margin=0.25)
    assert ours.margin == theirs.margin == 0.25


def _sentence_transformers_at_least(version: str) -> bool:
    import importlib.metadata

    installed = tuple(int(part) for part in importlib.metadata.version("sentence-transformers").split(".")[:2])
    return installed >= tuple(int(part) for part in version.split("."))


def test_all_zero_row_with_cosine_distance_has_sentence_transformers_gradient():
    # An all-zero row is at cosine distance exactly 1 from everything: no negative lies beyond its positive,
    # so the masked-maximum fallback decides, and which column its gradient reaches (scaled by 1 / eps of
    # the normalisation, ~1e11) depends on the row's distance to itself. Row 0 and 1: column 0 is not a
    # negative of the zero row; row 2: it is.
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for zero_row in (0, 1, 2):
        embeddings = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
        embeddings[zero_row] = 0
        expected_loss, expected_grad = loss_and_grad(
            STBatchSemiHardTripletLoss, embeddings, labels, STDistance.cosine_distance
        )
        loss, grad = loss_and_grad(BatchSemiHardTripletLoss, embeddings, labels, STDistance.cosine_distance)
        torch.testing.assert_close(loss, expected_loss)
        scale = expected_grad.abs().max()
        torch.testing.assert_close(grad / scale, expected_grad / scale, rtol=1e-5, atol=1e-6, msg=f"zero row {zero_row}")
