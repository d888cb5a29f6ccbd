"""SupConLoss, MultiSimilarityLoss (with and without MultiSimilarityMiner) and CircleLoss against
pytorch-metric-learning 2.9 itself: loss and gradients over random and adversarial label
structures (singletons, one class, all distinct, duplicates, exact ties), float64 and float32,
non-finite and half inputs, the sentence-transformers loss contract, bad input, the registry."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
from _support import each_bad_labelled_input, label_structures
from hypothesis import given, settings
from hypothesis import strategies as st

import embedplug
from embedplug import functional, losses

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")


@dataclass(frozen=True)
class ContrastiveLoss:
    id: str
    name: str  # embedplug.losses class
    functional: Callable[..., torch.Tensor]
    options: dict[str, Any] = field(default_factory=dict)  # embedplug's constructor options

    @property
    def ours(self) -> type:
        return getattr(losses, self.name)

    def theirs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """PML's value for the same options (MultiSimilarityLoss given its miner's pairs)."""
        options = dict(self.options)
        if self.name == "MultiSimilarityLoss":
            epsilon = options.pop("mining_epsilon", 0.1)
            loss = pml_losses.MultiSimilarityLoss(**options)
            if epsilon is None:
                return loss(embeddings, labels)
            return loss(embeddings, labels, pml_miners.MultiSimilarityMiner(epsilon=epsilon)(embeddings, labels))
        return getattr(pml_losses, self.name)(**options)(embeddings, labels)


LOSSES = [
    ContrastiveLoss("supcon", "SupConLoss", functional.supervised_contrastive_loss),
    ContrastiveLoss("supcon-t0.5", "SupConLoss", functional.supervised_contrastive_loss, {"temperature": 0.5}),
    ContrastiveLoss("ms-mined", "MultiSimilarityLoss", functional.multi_similarity_loss),
    ContrastiveLoss("ms-all-pairs", "MultiSimilarityLoss", functional.multi_similarity_loss, {"mining_epsilon": None}),
    ContrastiveLoss(
        "ms-mined-eps0",
        "MultiSimilarityLoss",
        functional.multi_similarity_loss,
        {"alpha": 1.0, "beta": 20.0, "base": 0.3, "mining_epsilon": 0.0},
    ),
    ContrastiveLoss("circle", "CircleLoss", functional.circle_loss),
    ContrastiveLoss("circle-face", "CircleLoss", functional.circle_loss, {"m": 0.25, "gamma": 256.0}),
]
each_loss = pytest.mark.parametrize("loss", LOSSES, ids=[loss.id for loss in LOSSES])


def ours_value(loss: ContrastiveLoss, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return loss.ours(None, **loss.options).compute_loss_from_embeddings([embeddings], labels)


def value_and_grad(fn, embeddings, labels):
    x = embeddings.detach().clone().requires_grad_()
    value = fn(x, labels)
    value.backward()
    return value.detach(), x.grad if x.grad is not None else torch.zeros_like(x)


def assert_matches_pml(loss, embeddings, labels, msg=""):
    float64 = embeddings.dtype == torch.float64
    tol = dict(rtol=1e-6, atol=1e-9) if float64 else dict(rtol=1e-5, atol=1e-7)
    expected = value_and_grad(loss.theirs, embeddings, labels)
    actual = value_and_grad(lambda x, y: ours_value(loss, x, y), embeddings, labels)
    torch.testing.assert_close(actual[0], expected[0], **tol, msg=f"value {msg}")
    # Gradients are 1 / (anchors counted) times O(1 / temperature) terms: compared at the scale of
    # the largest entry.
    grad_atol = tol["atol"] + tol["rtol"] * expected[1].abs().max().item()
    torch.testing.assert_close(actual[1], expected[1], rtol=tol["rtol"], atol=grad_atol, msg=f"gradient {msg}")


def adversarial_structures(n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    structures = label_structures(n, generator)
    structures["two_classes"] = torch.arange(n) % 2
    one_pair = torch.arange(n)
    one_pair[: min(n, 2)] = 0
    structures["one_pair_rest_singletons"] = one_pair
    return structures


@each_loss
@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 200])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_parity_with_pytorch_metric_learning(loss, n, dtype):
    generator = torch.Generator().manual_seed(20 + n)
    for name, labels in adversarial_structures(n, generator).items():
        embeddings = torch.randn(n, 16, generator=generator, dtype=dtype)
        assert_matches_pml(loss, embeddings, labels, name)


@each_loss
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_parity_with_duplicates_and_exact_ties(loss, dtype):
    # Copies of a few points (equal similarities everywhere) and axis vectors (similarities exactly
    # -1, 0, 1): the miner's strict comparisons meet exact ties, SupCon's row maximum is a positive.
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(6, 8, generator=generator, dtype=dtype)
    duplicates = points[torch.randint(0, 6, (48,), generator=generator)]
    basis = torch.cat([torch.eye(4), -torch.eye(4)]).to(dtype)
    axes = basis[torch.randint(0, 8, (48,), generator=generator)] * torch.randint(1, 4, (48, 1), generator=generator)
    cases = {"duplicates": duplicates, "axes": axes}
    if loss.options.get("mining_epsilon") == 0.0:
        # A positive and a negative copied from one point tie at the miner's strict threshold, and
        # the GEMM's last-bit rounding decides which side wins (in PML too): axis vectors only.
        del cases["duplicates"]
    for name, embeddings in cases.items():
        for labels in (torch.randint(0, 4, (48,), generator=generator), torch.arange(48) // 4):
            assert_matches_pml(loss, embeddings, labels, name)


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=32),
    loss=st.sampled_from(LOSSES),
    scale=st.sampled_from([0.1, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_property_equals_pytorch_metric_learning(labels, loss, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.tensor(labels)
    embeddings = torch.randn(labels.numel(), 5, generator=generator, dtype=torch.float64) * scale
    assert_matches_pml(loss, embeddings, labels)


@pytest.mark.parametrize(
    "name, parameters",
    [
        ("SupConLoss", {"temperature": 0.1}),
        ("MultiSimilarityLoss", {"alpha": 2.0, "beta": 50.0, "base": 0.5, "mining_epsilon": 0.1}),
        ("CircleLoss", {"m": 0.4, "gamma": 80.0}),
    ],
)
def test_constructor_defaults_config_and_citation(name, parameters):
    cls = getattr(losses, name)
    signature = inspect.signature(cls.__init__).parameters
    assert list(signature) == ["self", "model", *parameters]
    assert {key: signature[key].default for key in parameters} == parameters
    # PML's names and defaults (the miner's epsilon for mining_epsilon).
    pml_signature = inspect.signature(getattr(pml_losses, name).__init__).parameters
    for key in parameters:
        if key != "mining_epsilon":
            assert pml_signature[key].default == parameters[key]
    model = torch.nn.Linear(2, 2)
    instance = cls(model)
    assert instance.model is model
    assert instance.get_config_dict() == parameters
    assert "@inproceedings" in instance.citation


@each_loss
def test_forward_embeds_the_first_column_with_the_model(loss):
    model = torch.nn.Linear(3, 4).double()

    class Embedder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = model

        def forward(self, features):
            return {"sentence_embedding": self.linear(features["x"])}

    features = {"x": torch.randn(10, 3, dtype=torch.float64)}
    labels = torch.arange(10) // 3
    value = loss.ours(Embedder(), **loss.options)([features], labels)
    torch.testing.assert_close(value, loss.theirs(model(features["x"]), labels))


@each_loss
@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
def test_non_finite_embeddings_give_nan(loss, bad_value):
    embeddings = torch.randn(12, 4)
    embeddings[5, 2] = bad_value
    labels = torch.arange(12) // 3
    value, grad = value_and_grad(lambda x, y: ours_value(loss, x, y), embeddings, labels)
    assert torch.isnan(value) and torch.isnan(grad).any()
    if loss.id != "ms-mined" and loss.id != "ms-mined-eps0":
        # PML agrees, except that its miner compares NaN as false and drops those pairs silently.
        assert torch.isnan(value_and_grad(loss.theirs, embeddings, labels)[0])


@each_loss
def test_half_precision_follows_float32(loss):
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(64, 16, generator=generator)
    labels = torch.arange(64) // 4
    half = embeddings.half().requires_grad_()
    value = loss.functional(half, labels, **loss.options)
    value.backward()
    assert value.dtype == torch.float32 and half.grad.dtype == torch.float16
    torch.testing.assert_close(value, loss.theirs(half.detach().float(), labels), rtol=1e-5, atol=1e-6)


@each_loss
def test_labels_of_shape_n_by_1_are_accepted(loss):
    embeddings = torch.randn(8, 4, dtype=torch.float64)
    labels = torch.arange(8) // 2
    torch.testing.assert_close(loss.functional(embeddings, labels.unsqueeze(1), **loss.options), loss.theirs(embeddings, labels))


@each_loss
def test_float_labels_are_classes_by_equality(loss):
    # pytorch-metric-learning (like sentence-transformers) compares labels with ==: 0.5 and 0.7 stay
    # two classes, -0.0 and 0.0 are one.
    embeddings = torch.randn(12, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    values = torch.tensor([0.5, 0.7, -0.0, 0.0, 2.25, 1e9], dtype=torch.float64)
    labels = values[torch.tensor([0, 0, 1, 1, 2, 3, 4, 4, 5, 5, 0, 1])]
    assert_matches_pml(loss, embeddings, labels)


@each_loss
def test_non_contiguous_embeddings(loss):
    embeddings = torch.randn(16, 30, dtype=torch.float64)[:, ::3]
    labels = torch.arange(16) // 4
    assert not embeddings.is_contiguous()
    assert_matches_pml(loss, embeddings, labels)


@each_loss
@each_bad_labelled_input
def test_bad_input_gets_a_clear_error(loss, embeddings, labels, error, match):
    with pytest.raises(error, match=match):
        loss.functional(embeddings, labels, **loss.options)


@pytest.mark.parametrize(
    "fn, options, match",
    [
        (functional.supervised_contrastive_loss, {"temperature": 0.0}, "temperature"),
        (functional.supervised_contrastive_loss, {"temperature": float("nan")}, "temperature"),
        (functional.multi_similarity_loss, {"alpha": -1.0}, "alpha"),
        (functional.multi_similarity_loss, {"beta": 0.0}, "beta"),
        (functional.multi_similarity_loss, {"base": float("inf")}, "base"),
        (functional.multi_similarity_loss, {"mining_epsilon": float("nan")}, "mining_epsilon"),
        (functional.circle_loss, {"gamma": 0.0}, "gamma"),
        (functional.circle_loss, {"m": float("nan")}, "m"),
    ],
)
def test_bad_options_get_a_clear_error(fn, options, match):
    with pytest.raises(ValueError, match=match):
        fn(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), **options)


@pytest.mark.parametrize("name", ["SupConLoss", "MultiSimilarityLoss", "CircleLoss"])
def test_registered_as_builtin_plugin(name):
    assert embedplug.get_loss(name) is getattr(losses, name)


@pytest.mark.parametrize("name", ["SupConLoss", "MultiSimilarityLoss", "CircleLoss"])
def test_embedplug_train_treats_them_as_labelled_losses(name):
    from embedplug.train.losses import requires_labels

    assert requires_labels(getattr(losses, name))
