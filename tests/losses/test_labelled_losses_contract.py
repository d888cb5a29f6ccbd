"""What every labelled batch loss owes a sentence-transformers user, checked once for all four:
BatchHardTripletLoss, BatchHardSoftMarginTripletLoss, BatchSemiHardTripletLoss, BatchAllTripletLoss.

Each is compared with sentence-transformers' class of the same name: loss and gradients over random
label structures and exact ties (each loss with its own sizes, margins and tolerances), signature,
config, citation, ``forward``, the reference path for other distance callables, non-finite inputs,
half precision, ``[N, 1]`` labels and the errors for bad input. Behaviour only one loss has lives in
that loss's own test file.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from _support import KERNEL_DISTANCES, each_bad_labelled_input, label_structures, loss_and_grad, st_distance_function

import embedplug
from embedplug import functional, losses

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
STDistance = st_losses.BatchHardTripletLossDistanceFunction


@dataclass(frozen=True)
class LabelledLoss:
    name: str
    functional: Callable[..., torch.Tensor]
    options: dict[str, Any]  # constructor options other than the defaults, for both classes
    parity_sizes: tuple[int, ...] = (1, 2, 5, 64, 300)
    parity_margins: tuple[float, ...] = ()  # () for a loss without a margin
    # Classes of 30: more positives than the direct-compare path takes (sort + binary search).
    large_classes: bool = False
    tie_margins: tuple[float, ...] = ()
    tie_distances: tuple[str, ...] = tuple(KERNEL_DISTANCES)
    cosine_grad_atol: float = 1e-6

    @property
    def ours(self) -> type:
        return getattr(losses, self.name)

    @property
    def theirs(self) -> type:
        return getattr(st_losses, self.name)


LOSSES = [
    LabelledLoss("BatchHardTripletLoss", functional.batch_hard_triplet_loss, {"margin": 0.25}, parity_margins=(0.5,)),
    LabelledLoss(
        "BatchHardSoftMarginTripletLoss",
        functional.batch_hard_soft_margin_triplet_loss,
        {},
        # Without a true negative ST's "hardest negative" is d(a, a) + rowmax, and for cosine d(a, a)
        # is rounding noise, whose gradient both sides reproduce only to ~1e-6 absolute; so cosine is
        # compared more loosely, and not at exact ties.
        tie_distances=("euclidean", "squared_euclidean"),
        cosine_grad_atol=1e-5,
    ),
    LabelledLoss(
        "BatchSemiHardTripletLoss",
        functional.batch_semi_hard_triplet_loss,
        {"margin": 0.25},
        parity_margins=(0.5, 5.0),
        large_classes=True,
        tie_margins=(0, 1, 2),
    ),
    LabelledLoss(
        "BatchAllTripletLoss",
        functional.batch_all_triplet_loss,
        {"margin": 0.25},
        # ST's batch-all block is (pairs x N): 300 rows with classes of 30 would be slow for the test.
        parity_sizes=(1, 2, 5, 64, 160),
        parity_margins=(0.5, 5.0),
        large_classes=True,
        tie_margins=(0, 1, 2),
    ),
]
each_loss = pytest.mark.parametrize("loss", LOSSES, ids=[loss.name for loss in LOSSES])


def margins(values: tuple[float, ...]) -> list[dict[str, float]]:
    """Constructor options for each margin; one call with the defaults for a loss without one."""
    return [{"margin": value} for value in values] or [{}]


@pytest.mark.parametrize(
    "loss, n",
    [(loss, n) for loss in LOSSES for n in loss.parity_sizes],
    ids=[f"{loss.name}-{n}" for loss in LOSSES for n in loss.parity_sizes],
)
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
def test_parity_with_sentence_transformers(loss, n, distance):
    generator = torch.Generator().manual_seed(10 + n)
    metric = st_distance_function(distance)
    structures = label_structures(n, generator)
    if loss.large_classes:
        structures["classes_of_30"] = torch.arange(n) // 30
    grad_atol = loss.cosine_grad_atol if distance == "cosine" else 1e-6
    for name, labels in structures.items():
        embeddings = torch.randn(n, 32, generator=generator)
        for options in margins(loss.parity_margins):
            expected_loss, expected_grad = loss_and_grad(loss.theirs, embeddings, labels, metric, **options)
            ours_loss, ours_grad = loss_and_grad(loss.ours, embeddings, labels, metric, **options)
            torch.testing.assert_close(ours_loss, expected_loss, rtol=1e-5, atol=1e-6, msg=f"{name} {options}")
            torch.testing.assert_close(ours_grad, expected_grad, rtol=1e-5, atol=grad_atol, msg=f"{name} {options}")


@each_loss
def test_parity_with_exact_ties(loss):
    # Small integers (and integer margins): distances are exact, so ties are real. The first index
    # must win as in torch.max / a stable sort, and triplets exactly at loss 0 keep ST's gradient
    # (kept by batch-all, half by semi-hard's torch.maximum) and stay out of batch-all's denominator.
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randint(-2, 3, (40, 3), generator=generator).float()
    labels = torch.randint(0, 5, (40,), generator=generator)
    for distance in loss.tie_distances:
        metric = st_distance_function(distance)
        for options in margins(loss.tie_margins):
            expected_loss, expected_grad = loss_and_grad(loss.theirs, embeddings, labels, metric, **options)
            ours_loss, ours_grad = loss_and_grad(loss.ours, embeddings, labels, metric, **options)
            torch.testing.assert_close(ours_loss, expected_loss, rtol=1e-5, atol=1e-6, msg=f"{distance} {options}")
            torch.testing.assert_close(ours_grad, expected_grad, rtol=1e-5, atol=1e-5, msg=f"{distance} {options}")


@each_loss
def test_constructor_config_and_citation_match(loss):
    ours_signature = inspect.signature(loss.ours.__init__).parameters
    theirs_signature = inspect.signature(loss.theirs.__init__).parameters
    # embedplug's own options come last, default off, and stay out of the config unless on.
    assert list(ours_signature)[: len(theirs_signature)] == list(theirs_signature)
    extra = list(ours_signature)[len(theirs_signature):]
    assert extra == ["gather_across_devices"] and ours_signature["gather_across_devices"].default is False
    for name, parameter in theirs_signature.items():
        if name == "distance_metric":
            assert ours_signature[name].default.__name__ == parameter.default.__name__
        elif name not in ("self", "model"):
            assert ours_signature[name].default == parameter.default, name
    model = torch.nn.Linear(2, 2)
    ours, theirs = loss.ours(model, **loss.options), loss.theirs(model, **loss.options)
    assert ours.get_config_dict() == theirs.get_config_dict()
    assert ours.citation == theirs.citation
    assert ours.model is model and ours.sentence_embedder is model


@each_loss
def test_forward_embeds_the_first_column_with_the_model(loss):
    model = torch.nn.Linear(3, 4)

    class Embedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = model

        def forward(self, features):
            return {"sentence_embedding": self.linear(features["x"])}

    features = {"x": torch.randn(10, 3)}
    labels = torch.arange(10) // 2
    options = {"margin": 1.0} if "margin" in loss.options else {}
    expected = loss.theirs(Embedder(), **options)([features], labels)
    torch.testing.assert_close(loss.ours(Embedder(), **options)([features], labels), expected)


@each_loss
def test_custom_distance_callable_runs_reference_path(loss):
    def manhattan(embeddings):
        return torch.cdist(embeddings, embeddings, p=1)

    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(50, 8, generator=generator)
    labels = torch.arange(50) // 5
    torch.testing.assert_close(
        loss_and_grad(loss.ours, embeddings, labels, manhattan), loss_and_grad(loss.theirs, embeddings, labels, manhattan)
    )


@each_loss
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_non_finite_embeddings_give_nan_like_sentence_transformers(loss, bad_value, distance):
    embeddings = torch.randn(12, 4)
    embeddings[5, 2] = bad_value
    labels = torch.arange(12) // 3
    metric = st_distance_function(distance)
    expected_loss, expected_grad = loss_and_grad(loss.theirs, embeddings, labels, metric)
    ours_loss, ours_grad = loss_and_grad(loss.ours, embeddings, labels, metric)
    assert torch.isnan(expected_loss) and torch.isnan(ours_loss)
    assert torch.isnan(expected_grad).any() and torch.isnan(ours_grad).any()


@each_loss
def test_half_precision_follows_float32(loss):
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(64, 16, generator=generator)
    labels = torch.arange(64) // 4
    half = embeddings.half().requires_grad_()
    value = loss.functional(half, labels)
    value.backward()
    assert value.dtype == torch.float32 and half.grad.dtype == torch.float16
    expected_loss, _ = loss_and_grad(loss.theirs, half.detach(), labels, STDistance.euclidean_distance)
    torch.testing.assert_close(value, expected_loss, rtol=1e-5, atol=1e-6)


@each_loss
def test_labels_of_shape_n_by_1_are_accepted_like_sentence_transformers(loss):
    embeddings = torch.randn(8, 4)
    labels = (torch.arange(8) // 2).unsqueeze(1)
    expected, _ = loss_and_grad(loss.theirs, embeddings, labels, STDistance.euclidean_distance)
    torch.testing.assert_close(loss.functional(embeddings, labels), expected)


@each_loss
@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
def test_float_labels_are_classes_by_equality_like_sentence_transformers(loss, distance):
    # sentence-transformers compares labels with ==: 0.5 and 0.7 are two classes (a truncation to int
    # would merge them), -0.0 and 0.0 one; [N, 1] float labels too.
    generator = torch.Generator().manual_seed(6)
    embeddings = torch.randn(12, 5, generator=generator)
    values = torch.tensor([0.5, 0.7, -0.0, 0.0, 2.25, 1e9])
    labels = values[torch.tensor([0, 0, 1, 1, 2, 3, 4, 4, 5, 5, 0, 1])]
    metric = st_distance_function(distance)
    for shaped in (labels, labels.double().unsqueeze(1)):
        expected_loss, expected_grad = loss_and_grad(loss.theirs, embeddings, shaped, metric)
        ours_loss, ours_grad = loss_and_grad(loss.ours, embeddings, shaped, metric)
        torch.testing.assert_close(ours_loss, expected_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours_grad, expected_grad, rtol=1e-5, atol=loss.cosine_grad_atol)


@each_loss
@each_bad_labelled_input
def test_bad_input_gets_a_clear_error(loss, embeddings, labels, error, match):
    with pytest.raises(error, match=match):
        loss.functional(embeddings, labels)


@each_loss
def test_registered_as_builtin_plugin(loss):
    assert embedplug.get_loss(loss.name) is loss.ours
