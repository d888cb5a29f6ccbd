"""embedplug.losses.BatchSemiHardTripletLoss is a drop-in for sentence-transformers' class of the same name."""

from __future__ import annotations

import inspect

import pytest
import torch
from _support import KERNEL_DISTANCES, label_structures, st_distance_function

import embedplug
from embedplug.functional import batch_semi_hard_triplet_loss
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


def test_custom_distance_callable_runs_reference_path():
    def manhattan(embeddings):
        return torch.cdist(embeddings, embeddings, p=1)

    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(50, 8, generator=generator)
    labels = torch.arange(50) // 5
    torch.testing.assert_close(
        our_loss_and_grad(embeddings, labels, manhattan), st_loss_and_grad(embeddings, labels, manhattan)
    )


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_embeddings_give_nan_like_sentence_transformers(bad_value):
    embeddings = torch.randn(12, 4)
    embeddings[5, 2] = bad_value
    labels = torch.arange(12) // 3
    for distance in ("euclidean", "cosine"):
        metric = st_distance_function(distance)
        expected_loss, expected_grad = st_loss_and_grad(embeddings, labels, metric)
        loss, grad = our_loss_and_grad(embeddings, labels, metric)
        assert torch.isnan(expected_loss) and torch.isnan(loss)
        assert torch.isnan(expected_grad).any() and torch.isnan(grad).any()


def test_half_precision_follows_float32():
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(64, 16, generator=generator)
    labels = torch.arange(64) // 4
    half = embeddings.half().requires_grad_()
    loss = batch_semi_hard_triplet_loss(half, labels)
    loss.backward()
    assert half.grad.dtype == torch.float16
    expected_loss, _ = st_loss_and_grad(half.detach(), labels, STDistance.euclidean_distance)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "embeddings, labels, error, match",
    [
        (torch.randn(4, 3, 2), torch.zeros(4, dtype=torch.long), ValueError, "2-D"),
        (torch.ones(4, 3, dtype=torch.long), torch.zeros(4, dtype=torch.long), TypeError, "floating-point"),
        (torch.randn(4, 3), torch.zeros(5, dtype=torch.long), ValueError, "expects 4 labels"),
        (torch.randn(4, 3), torch.zeros(4), TypeError, "integer tensor"),
        (torch.randn(0, 3), torch.zeros(0, dtype=torch.long), ValueError, "empty batch"),
        (torch.randn(4, 3), [0, 0, 1, 1], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_gets_a_clear_error(embeddings, labels, error, match):
    with pytest.raises(error, match=match):
        batch_semi_hard_triplet_loss(embeddings, labels)


def test_labels_of_shape_n_by_1_are_accepted_like_sentence_transformers():
    embeddings = torch.randn(8, 4)
    labels = (torch.arange(8) // 2).unsqueeze(1)
    expected, _ = st_loss_and_grad(embeddings, labels, STDistance.euclidean_distance)
    torch.testing.assert_close(batch_semi_hard_triplet_loss(embeddings, labels), expected)


def test_constructor_attributes_config_and_citation_match():
    ours_signature = inspect.signature(BatchSemiHardTripletLoss.__init__).parameters
    theirs_signature = inspect.signature(STBatchSemiHardTripletLoss.__init__).parameters
    assert list(ours_signature) == list(theirs_signature)
    assert ours_signature["margin"].default == theirs_signature["margin"].default
    assert ours_signature["distance_metric"].default.__name__ == theirs_signature["distance_metric"].default.__name__
    model = torch.nn.Linear(2, 2)
    ours, theirs = BatchSemiHardTripletLoss(model, margin=0.25), STBatchSemiHardTripletLoss(model, margin=0.25)
    assert ours.get_config_dict() == theirs.get_config_dict()
    assert ours.citation == theirs.citation
    assert ours.margin == theirs.margin == 0.25
    assert ours.model is model and ours.sentence_embedder is model


def test_forward_embeds_the_first_column_with_the_model():
    model = torch.nn.Linear(3, 4)

    class Embedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = model

        def forward(self, features):
            return {"sentence_embedding": self.linear(features["x"])}

    features = {"x": torch.randn(10, 3)}
    labels = torch.arange(10) // 2
    loss = BatchSemiHardTripletLoss(Embedder(), margin=1.0)([features], labels)
    expected = STBatchSemiHardTripletLoss(Embedder(), margin=1.0)([features], labels)
    torch.testing.assert_close(loss, expected)


def test_registered_as_builtin_plugin():
    assert embedplug.get_loss("BatchSemiHardTripletLoss") is BatchSemiHardTripletLoss
