"""Tests for the example plugin; run them after installing it (``pip install .`` then ``pytest``)."""

import importlib.metadata
import math

import pytest
import torch
from torch import nn

import embedplug
from embedplug_example import (
    ExampleLiftedStructureLoss,
    ExampleSupConLoss,
    SeededShuffleBatchSampler,
    lifted_structure,
    supervised_contrastive_loss,
)


# ----- discovery: the first thing a new plugin should check (as in datasette-plugin's template)


def test_plugin_is_discovered_through_its_entry_point():
    assert embedplug.get_loss("ExampleSupConLoss") is ExampleSupConLoss
    assert embedplug.get_loss("example_supcon") is ExampleSupConLoss
    assert embedplug.get_loss("ExampleLiftedStructureLoss") is ExampleLiftedStructureLoss
    assert embedplug.get_loss("example_lifted_structure") is ExampleLiftedStructureLoss
    assert embedplug.get_sampler("SeededShuffleBatchSampler") is SeededShuffleBatchSampler
    [record] = [record for record in embedplug.list_plugins() if record["distribution"] == "embedplug-example"]
    assert record["version"] == importlib.metadata.version("embedplug-example")
    assert record["errors"] == []
    assert record["losses"] == ["ExampleSupConLoss", "example_supcon", "ExampleLiftedStructureLoss", "example_lifted_structure"]
    assert record["samplers"] == ["SeededShuffleBatchSampler", "seeded_shuffle"]


def test_embedplug_train_treats_the_loss_as_label_aware():
    from embedplug.hookspecs import is_label_aware

    assert is_label_aware(ExampleSupConLoss)


# ----- the loss


def reference_supcon(embeddings, labels, temperature):
    """The paper's formula written out anchor by anchor, as the oracle."""
    normalized = embeddings / embeddings.norm(dim=1, keepdim=True)
    per_anchor = []
    for anchor in range(len(labels)):
        others = [other for other in range(len(labels)) if other != anchor]
        positives = [other for other in others if labels[other] == labels[anchor]]
        if not positives:
            continue
        similarity = {other: normalized[anchor] @ normalized[other] / temperature for other in others}
        log_denominator = torch.logsumexp(torch.stack([similarity[other] for other in others]), dim=0)
        per_anchor.append(-torch.stack([similarity[p] - log_denominator for p in positives]).mean())
    return torch.stack(per_anchor).mean()


@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0])
def test_loss_matches_the_formula(temperature):
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(9, 5, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4])  # labels 2 and 4 have no positive: skipped anchors
    expected = reference_supcon(embeddings, labels, temperature)
    actual = supervised_contrastive_loss(embeddings, labels, temperature)
    torch.testing.assert_close(actual, expected)


def test_loss_gradient_is_correct():
    embeddings = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda x: supervised_contrastive_loss(x, labels, 0.5), (embeddings,))


def test_loss_without_any_positive_is_zero_and_differentiable():
    embeddings = torch.randn(4, 3, requires_grad=True)
    loss = supervised_contrastive_loss(embeddings, torch.arange(4))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_loss_is_lower_when_labels_agree_with_geometry():
    clustered = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    agreeing = supervised_contrastive_loss(clustered, torch.tensor([0, 0, 1, 1]))
    disagreeing = supervised_contrastive_loss(clustered, torch.tensor([0, 1, 0, 1]))
    assert agreeing < disagreeing


class TinyEmbedder(nn.Module):
    """Stands in for a SentenceTransformer: features dict in, ``{"sentence_embedding": ...}`` out."""

    def __init__(self):
        super().__init__()
        self.projection = nn.Linear(8, 4)

    def forward(self, features):
        return {"sentence_embedding": self.projection(features["input_ids"])}


def test_loss_follows_the_sentence_transformers_contract():
    model = TinyEmbedder()
    loss_module = ExampleSupConLoss(model, temperature=0.2)
    features = [{"input_ids": torch.randn(6, 8)}]
    loss = loss_module(features, torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert loss_module.model is model
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.projection.weight.grad is not None and torch.isfinite(model.projection.weight.grad).all()
    assert loss_module.get_config_dict() == {"temperature": 0.2}
    assert "Supervised Contrastive Learning" in loss_module.citation


def test_loss_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        ExampleSupConLoss(TinyEmbedder(), temperature=0.0)


# ----- the rule-defined loss: pytorch-metric-learning's LiftedStructureLoss, interpreted by embedplug


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("margins", [{}, {"neg_margin": 0.7, "pos_margin": 0.2}])
def test_lifted_structure_rule_equals_pytorch_metric_learning(dtype, margins):
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    generator = torch.Generator().manual_seed(0)
    tolerance = {"rtol": 1e-6, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-7}
    for labels in (torch.arange(12) // 3, torch.randint(0, 4, (12,), generator=generator), torch.zeros(5, dtype=torch.long)):
        embeddings = torch.randn(labels.numel(), 6, generator=generator, dtype=dtype)
        ours, theirs = embeddings.clone().requires_grad_(), embeddings.clone().requires_grad_()
        value = ExampleLiftedStructureLoss(None, **margins).compute_loss_from_embeddings([ours], labels)
        expected = pml_losses.LiftedStructureLoss(**margins)(theirs, labels)
        torch.testing.assert_close(value, expected, **tolerance)
        value.backward()
        expected.backward()
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=tolerance["rtol"], atol=tolerance["rtol"] * theirs.grad.abs().max().item() + tolerance["atol"])


def test_lifted_structure_loss_is_a_sentence_transformers_loss():
    model = TinyEmbedder()
    loss_module = ExampleLiftedStructureLoss(model, neg_margin=0.8)
    loss = loss_module([{"input_ids": torch.randn(6, 8)}], torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert loss_module.model is model and loss.ndim == 0 and torch.isfinite(loss)
    assert loss_module.rule == lifted_structure(neg_margin=0.8)
    assert loss_module.get_config_dict() == {"neg_margin": 0.8, "pos_margin": 0.0}
    assert loss_module.backend_info()["implementation"] in ("fused", "reference")
    assert "Lifted Structured Feature Embedding" in loss_module.citation


# ----- the sampler


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_yields_every_index_once_per_epoch():
    sampler = SeededShuffleBatchSampler(range(10), batch_size=3, drop_last=False, seed=1)
    batches = epoch_batches(sampler, 0)
    assert [len(batch) for batch in batches] == [3, 3, 3, 1]
    assert sorted(index for batch in batches for index in batch) == list(range(10))
    assert len(sampler) == len(batches)


def test_sampler_drop_last_drops_the_short_batch():
    sampler = SeededShuffleBatchSampler(range(10), batch_size=3, drop_last=True)
    batches = epoch_batches(sampler, 0)
    assert [len(batch) for batch in batches] == [3, 3, 3]
    assert len(sampler) == 3


def test_sampler_order_is_a_function_of_seed_and_epoch_only():
    def make(seed):
        # A generator is passed as the trainer does; it must not influence the order.
        return SeededShuffleBatchSampler(range(50), 8, False, generator=torch.Generator().manual_seed(123), seed=seed)

    assert epoch_batches(make(7), 3) == epoch_batches(make(7), 3)
    assert epoch_batches(make(7), 3) != epoch_batches(make(7), 4)
    assert epoch_batches(make(7), 3) != epoch_batches(make(8), 3)
    # Not seed + epoch: (0, 1) and (1, 0) are different orders.
    assert epoch_batches(make(0), 1) != epoch_batches(make(1), 0)


def test_sampler_length_matches_iteration_for_many_sizes():
    for size in range(1, 12):
        for drop_last in (False, True):
            sampler = SeededShuffleBatchSampler(range(size), 4, drop_last)
            expected = size // 4 if drop_last else math.ceil(size / 4)
            assert len(sampler) == len(list(sampler)) == expected
