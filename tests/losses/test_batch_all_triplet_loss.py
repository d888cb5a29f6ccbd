"""embedplug.losses.BatchAllTripletLoss is a drop-in for sentence-transformers' class of the same name."""

from __future__ import annotations

import pytest
import torch
from _support import loss_and_grad

from embedplug.losses import BatchAllTripletLoss

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
STBatchAllTripletLoss = st_losses.BatchAllTripletLoss
STDistance = st_losses.BatchHardTripletLossDistanceFunction


def test_no_active_triplet_gives_zero_and_zero_gradient():
    embeddings = torch.tensor([[0.0, 0.0], [0.0, 0.1], [100.0, 0.0], [100.0, 0.1]])
    labels = torch.tensor([0, 0, 1, 1])
    loss, grad = loss_and_grad(BatchAllTripletLoss, embeddings, labels, STDistance.euclidean_distance, margin=1)
    assert loss.item() == 0 and torch.equal(grad, torch.zeros_like(grad))


def test_loss_specific_attributes_match():
    # Signature, config and citation: test_labelled_losses_contract.py.
    model = torch.nn.Linear(2, 2)
    ours, theirs = BatchAllTripletLoss(model, margin=0.25), STBatchAllTripletLoss(model, margin=0.25)
    assert ours.triplet_margin == theirs.triplet_margin == 0.25
