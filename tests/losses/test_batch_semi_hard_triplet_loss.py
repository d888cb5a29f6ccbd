"""embedplug.losses.BatchSemiHardTripletLoss is a drop-in for sentence-transformers' class of the same name."""

from __future__ import annotations

import pytest
import torch
from _support import KERNEL_DISTANCES, label_structures, st_distance_function

from embedplug.losses import BatchSemiHardTripletLoss

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
STBatchSemiHardTripletLoss = st_losses.BatchSemiHardTripletLoss
STDistance = st_losses.BatchHardTripletLossDistanceFunction


def st_loss_and_grad(embeddings, labels, distance_metric, margin=5):
    x = embeddings.detach().clone().requires_grad_()
    loss = STBatchSemiHardTripletLoss(None, distance_metric=distance_metric, margin=margin).batch_semi_hard_triplet_loss(labels, x)
    loss.backward()
    return loss.detach(), x.grad


def our_loss_and_grad(embeddings, labels, distance_metric, margin=5):
    x = embeddings.detach().clone().requires_grad_()
    loss = BatchSemiHardTripletLoss(None, distance_metric=distance_metric, margin=margin).compute_loss_from_embeddings(
        [x], labels
    )
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
@pytest.mark.parametrize("n", [1, 2, 5, 64, 300])
def test_parity_with_sentence_transformers(distance, n):
    generator = torch.Generator().manual_seed(10 + n)
    metric = st_distance_function(distance)
    structures = label_structures(n, generator)
    structures["classes_of_30"] = torch.arange(n) // 30  # the sort + binary-search path
    for name, labels in structures.items():
        embeddings = torch.randn(n, 32, generator=generator)
        for margin in (0.5, 5.0):
            expected_loss, expected_grad = st_loss_and_grad(embeddings, labels, metric, margin)
            loss, grad = our_loss_and_grad(embeddings, labels, metric, margin)
            torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6, msg=name)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6, msg=name)


def test_parity_with_exact_ties():
    # Small integers and integer margins: equal negative distances (the stable sort's first index
    # must win) and pairs exactly at loss 0 (torch.maximum's half gradient).
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randint(-2, 3, (40, 3), generator=generator).float()
    labels = torch.randint(0, 5, (40,), generator=generator)
    for distance in KERNEL_DISTANCES:
        for margin in (0, 1, 2):
            metric = st_distance_function(distance)
            expected_loss, expected_grad = st_loss_and_grad(embeddings, labels, metric, margin)
            loss, grad = our_loss_and_grad(embeddings, labels, metric, margin)
            torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_without_a_farther_negative_the_farthest_one_is_used():
    # Positive at distance 3, negatives at 1 and 2: no semi-hard negative, ST falls back to the
    # largest negative distance (2): loss (3 - 2) + 1 for anchor 0.
    embeddings = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    expected_loss, expected_grad = st_loss_and_grad(embeddings, labels, STDistance.euclidean_distance, margin=1)
    loss, grad = our_loss_and_grad(embeddings, labels, STDistance.euclidean_distance, margin=1)
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
