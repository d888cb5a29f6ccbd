"""embedplug.losses.BatchAllTripletLoss is a drop-in for sentence-transformers' class of the same name."""

from __future__ import annotations

import pytest
import torch
from _support import KERNEL_DISTANCES, label_structures, st_distance_function

from embedplug.losses import BatchAllTripletLoss

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
STBatchAllTripletLoss = st_losses.BatchAllTripletLoss
STDistance = st_losses.BatchHardTripletLossDistanceFunction


def st_loss_and_grad(embeddings, labels, distance_metric, margin=5):
    x = embeddings.detach().clone().requires_grad_()
    loss = STBatchAllTripletLoss(None, distance_metric=distance_metric, margin=margin).batch_all_triplet_loss(labels, x)
    loss.backward()
    return loss.detach(), x.grad


def our_loss_and_grad(embeddings, labels, distance_metric, margin=5):
    x = embeddings.detach().clone().requires_grad_()
    loss = BatchAllTripletLoss(None, distance_metric=distance_metric, margin=margin).compute_loss_from_embeddings(
        [x], labels
    )
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
@pytest.mark.parametrize("n", [1, 2, 5, 64, 160])
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
    # Small integers and integer margins: many triplets sit exactly at loss 0 (kept in ST's
    # gradient, not counted in its denominator).
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


def test_no_active_triplet_gives_zero_and_zero_gradient():
    embeddings = torch.tensor([[0.0, 0.0], [0.0, 0.1], [100.0, 0.0], [100.0, 0.1]])
    labels = torch.tensor([0, 0, 1, 1])
    loss, grad = our_loss_and_grad(embeddings, labels, STDistance.euclidean_distance, margin=1)
    assert loss.item() == 0 and torch.equal(grad, torch.zeros_like(grad))


def test_loss_specific_attributes_match():
    # Signature, config and citation: test_labelled_losses_contract.py.
    model = torch.nn.Linear(2, 2)
    ours, theirs = BatchAllTripletLoss(model, margin=0.25), STBatchAllTripletLoss(model, margin=0.25)
    assert ours.triplet_margin == theirs.triplet_margin == 0.25
