"""GradCache of CachedGISTEmbedLoss and CachedMultipleNegativesRankingLoss on a toy model (fast): the
loss and parameter gradients equal those of the uncached loss on the same dropout draws."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from embedplug.functional import gist_embed_loss, multiple_negatives_ranking_loss
from embedplug.losses import CachedGISTEmbedLoss, CachedMultipleNegativesRankingLoss

pytest.importorskip("sentence_transformers")


class ToyEmbedder(nn.Sequential):
    """A SentenceTransformer-shaped model: features dict in, ``sentence_embedding`` out, dropout on."""

    def __init__(self):
        super().__init__(nn.Linear(6, 8), nn.Dropout(0.2), nn.Tanh(), nn.Linear(8, 5))

    def forward(self, features):
        return {"sentence_embedding": super().forward(features["input_ids"])}


def columns(batch_size, count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randn(batch_size, 6, generator=generator)} for _ in range(count)]


def reference_signal(model, features, mini_batch_size, loss_of_embeddings, seed):
    """Mini-batch forwards with gradients in GradCache's order and RNG sequence, then the uncached loss."""
    model.zero_grad()
    torch.manual_seed(seed)
    embeddings = [
        torch.cat([model({"input_ids": chunk})["sentence_embedding"] for chunk in column["input_ids"].split(mini_batch_size)])
        for column in features
    ]
    loss = loss_of_embeddings(embeddings)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def cached_signal(model, loss_module, features, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    loss = loss_module(features, None)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def assert_same(ours, expected):
    torch.testing.assert_close(ours[0], expected[0])
    for grad, expected_grad in zip(ours[1], expected[1]):
        torch.testing.assert_close(grad, expected_grad)


def test_cached_self_guided_gist_replays_dropout_and_matches_the_uncached_loss():
    model = ToyEmbedder().train()
    features = columns(20, 3)
    loss = CachedGISTEmbedLoss(model, guide=None, mini_batch_size=6, margin=0.05, temperature=0.1)
    assert loss.uses_gradient_cache

    def uncached(embeddings):
        return gist_embed_loss(embeddings[0], embeddings[1], embeddings[2:], margin=0.05, temperature=0.1)

    assert_same(cached_signal(model, loss, features, seed=1), reference_signal(model, features, 6, uncached, seed=1))


def test_cached_gist_without_replay_would_differ():
    # Guards the test above: with dropout, other draws give other gradients.
    model = ToyEmbedder().train()
    features = columns(20, 2)
    loss = CachedGISTEmbedLoss(model, guide=None, mini_batch_size=6, margin=0.05, temperature=0.1)

    def uncached(embeddings):
        return gist_embed_loss(embeddings[0], embeddings[1], margin=0.05, temperature=0.1)

    ours = cached_signal(model, loss, features, seed=1)
    other_draws = reference_signal(model, features, 6, uncached, seed=2)
    assert not torch.allclose(ours[0], other_draws[0])


def test_cached_mnrl_replays_dropout_and_matches_the_uncached_loss():
    model = ToyEmbedder().train()
    features = columns(20, 3, seed=3)
    directions = ("query_to_doc", "doc_to_query", "doc_to_doc")
    loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=7, directions=directions)

    def uncached(embeddings):
        return multiple_negatives_ranking_loss(embeddings[0], embeddings[1], embeddings[2:], directions=directions)

    assert_same(cached_signal(model, loss, features, seed=4), reference_signal(model, features, 7, uncached, seed=4))


def test_cached_losses_evaluate_without_gradients():
    model = ToyEmbedder().eval()
    features = columns(12, 2)
    with torch.no_grad():
        value = CachedGISTEmbedLoss(model, guide=None, mini_batch_size=5)(features, None)
        embeddings = [model(column)["sentence_embedding"] for column in features]
    torch.testing.assert_close(value, gist_embed_loss(*embeddings))


def test_calculate_loss_is_patchable_on_the_instance():
    model = ToyEmbedder().eval()
    loss = CachedGISTEmbedLoss(model, guide=None, mini_batch_size=5)
    calls = []
    original = loss.calculate_loss

    def wrapped(reps, *args, **kwargs):
        calls.append(len(reps))
        return original(reps, *args, **kwargs)

    loss.calculate_loss = wrapped
    loss(columns(12, 2), None).backward()
    assert calls == [2]
