"""embedplug.losses.TripletLoss is a drop-in for sentence-transformers' class of the same name."""

from __future__ import annotations

import inspect

import pytest
import torch

import embedplug
from embedplug.functional import triplet_loss
from embedplug.losses import TripletDistanceMetric, TripletLoss

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
STTripletLoss = st_losses.TripletLoss
STMetric = st_losses.TripletDistanceMetric

METRICS = ("COSINE", "EUCLIDEAN", "MANHATTAN")


def loss_and_grads(loss_module, columns):
    columns = [c.detach().clone().requires_grad_() for c in columns]
    loss = loss_module.compute_loss_from_embeddings(columns, None)
    grads = torch.autograd.grad(loss, columns)
    return loss.detach(), grads


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("margin", [0.0, 0.5, 5.0])
def test_parity_with_sentence_transformers(metric, margin):
    generator = torch.Generator().manual_seed(1)
    columns = [torch.randn(33, 16, generator=generator) for _ in range(3)]
    for ours_metric in (getattr(TripletDistanceMetric, metric), getattr(STMetric, metric)):
        ours = loss_and_grads(TripletLoss(None, distance_metric=ours_metric, triplet_margin=margin), columns)
        theirs = loss_and_grads(STTripletLoss(None, distance_metric=getattr(STMetric, metric), triplet_margin=margin), columns)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_half_precision_is_computed_in_float32_like_sentence_transformers():
    generator = torch.Generator().manual_seed(2)
    columns = [torch.randn(8, 4, generator=generator).half() for _ in range(3)]
    for metric in METRICS:
        ours = TripletLoss(None, distance_metric=getattr(TripletDistanceMetric, metric)).compute_loss_from_embeddings(columns, None)
        theirs = STTripletLoss(None, distance_metric=getattr(STMetric, metric)).compute_loss_from_embeddings(columns, None)
        assert ours.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(ours, theirs)


def test_forward_embeds_every_column():
    linear = torch.nn.Linear(3, 4)

    class Embedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear

        def forward(self, features):
            return {"sentence_embedding": self.linear(features["x"])}

    generator = torch.Generator().manual_seed(3)
    features = [{"x": torch.randn(6, 3, generator=generator)} for _ in range(3)]
    torch.testing.assert_close(TripletLoss(Embedder())(features, None), STTripletLoss(Embedder())(features, None))


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        triplet_loss(torch.randn(4, 3), torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="unknown distance"):
        triplet_loss(torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3), distance="chebyshev")
    with pytest.raises(ValueError, match="2-D"):
        triplet_loss(torch.randn(4), torch.randn(4), torch.randn(4))


def test_constructor_attributes_config_and_citation_match():
    ours_signature = inspect.signature(TripletLoss.__init__).parameters
    theirs_signature = inspect.signature(STTripletLoss.__init__).parameters
    assert list(ours_signature) == list(theirs_signature)
    assert ours_signature["triplet_margin"].default == theirs_signature["triplet_margin"].default
    model = torch.nn.Linear(2, 2)
    for metric in METRICS:
        ours = TripletLoss(model, distance_metric=getattr(TripletDistanceMetric, metric), triplet_margin=1.5)
        theirs = STTripletLoss(model, distance_metric=getattr(STMetric, metric), triplet_margin=1.5)
        assert ours.get_config_dict() == theirs.get_config_dict()
        assert TripletLoss(model, distance_metric=getattr(STMetric, metric)).get_config_dict()["distance_metric"] == (
            f"TripletDistanceMetric.{metric}"
        )
    assert TripletLoss(model).get_config_dict() == STTripletLoss(model).get_config_dict()
    assert TripletLoss(model).citation == STTripletLoss(model).citation
    assert TripletLoss(model).model is model


def test_registered_as_builtin_plugin():
    assert embedplug.get_loss("TripletLoss") is TripletLoss
