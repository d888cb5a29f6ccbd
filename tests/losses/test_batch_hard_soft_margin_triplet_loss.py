"""embedplug.losses.BatchHardSoftMarginTripletLoss is a drop-in for sentence-transformers' class of the same name."""

from __future__ import annotations

import pytest
import torch
from _support import KERNEL_DISTANCES, label_structures, st_distance_function

from embedplug.losses import BatchHardSoftMarginTripletLoss, BatchHardTripletLoss

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
STLoss = st_losses.BatchHardSoftMarginTripletLoss
STDistance = st_losses.BatchHardTripletLossDistanceFunction


def st_loss_and_grad(embeddings, labels, distance_metric):
    x = embeddings.detach().clone().requires_grad_()
    loss = STLoss(None, distance_metric=distance_metric).batch_hard_triplet_soft_margin_loss(labels, x)
    loss.backward()
    return loss.detach(), x.grad


def our_loss_and_grad(embeddings, labels, distance_metric):
    x = embeddings.detach().clone().requires_grad_()
    loss = BatchHardSoftMarginTripletLoss(None, distance_metric=distance_metric).compute_loss_from_embeddings([x], labels)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
@pytest.mark.parametrize("n", [1, 2, 5, 64, 300])
def test_parity_with_sentence_transformers(distance, n):
    generator = torch.Generator().manual_seed(10 + n)
    metric = st_distance_function(distance)
    for name, labels in label_structures(n, generator).items():
        embeddings = torch.randn(n, 32, generator=generator)
        expected_loss, expected_grad = st_loss_and_grad(embeddings, labels, metric)
        loss, grad = our_loss_and_grad(embeddings, labels, metric)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6, msg=name)
        # Without a true negative ST's "hardest negative" is d(a, a) + rowmax: for cosine d(a, a)
        # is rounding noise, whose gradient both sides reproduce only to ~1e-6 absolute.
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6 if distance != "cosine" else 1e-5, msg=name)


def test_parity_with_exact_ties():
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randint(-2, 3, (40, 3), generator=generator).float()
    labels = torch.randint(0, 5, (40,), generator=generator)
    for distance in ("euclidean", "squared_euclidean"):
        metric = st_distance_function(distance)
        torch.testing.assert_close(
            our_loss_and_grad(embeddings, labels, metric), st_loss_and_grad(embeddings, labels, metric), rtol=1e-5, atol=1e-5
        )


def test_loss_specific_attributes_match():
    # Signature, config and citation: test_labelled_losses_contract.py.
    model = torch.nn.Linear(2, 2)
    ours, theirs = BatchHardSoftMarginTripletLoss(model), STLoss(model)
    assert ours.triplet_margin == theirs.triplet_margin == 5
    assert isinstance(ours, BatchHardTripletLoss)
