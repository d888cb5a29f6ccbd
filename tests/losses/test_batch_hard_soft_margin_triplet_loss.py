"""embedplug.losses.BatchHardSoftMarginTripletLoss is a drop-in for sentence-transformers' class of the same name."""

from __future__ import annotations

import pytest
import torch

from embedplug.losses import BatchHardSoftMarginTripletLoss, BatchHardTripletLoss

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
STLoss = st_losses.BatchHardSoftMarginTripletLoss


def test_loss_specific_attributes_match():
    # Signature, config and citation: test_labelled_losses_contract.py.
    model = torch.nn.Linear(2, 2)
    ours, theirs = BatchHardSoftMarginTripletLoss(model), STLoss(model)
    assert ours.triplet_margin == theirs.triplet_margin == 5
    assert isinstance(ours, BatchHardTripletLoss)
