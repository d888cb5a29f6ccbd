"""GradCache of CachedGISTEmbedLoss and CachedMultipleNegativesRankingLoss on a toy model (fast): the
loss and parameter gradients equal those of the uncached loss on the same dropout draws."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from embedplug.functional import gist_embed_loss, multiple_negatives_ranking_loss
from embedplug.losses import CachedGISTEmbedLoss, CachedMultipleNegativesRankingLoss
from embedplug.losses.gradcache import length_order, permute_rows, restore_order

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


class ToyTokenEmbedder(nn.Sequential):
    """Token-level toy model: masked mean of per-token features, with dropout, like a transformer's
    padded input (``input_ids`` [B, L, 6] floats and ``attention_mask`` [B, L])."""

    def __init__(self):
        super().__init__(nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.2), nn.Tanh(), nn.Linear(8, 5)))

    def forward(self, features):
        mask = features["attention_mask"].unsqueeze(-1).float()
        tokens = self[0](features["input_ids"])
        return {"sentence_embedding": (tokens * mask).sum(1) / mask.sum(1).clamp_min(1)}


def padded_columns(batch_size, count, width=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    result = []
    for _ in range(count):
        lengths = torch.randint(1, width + 1, (batch_size,), generator=generator)
        mask = (torch.arange(width) < lengths.unsqueeze(1)).long()
        result.append({"input_ids": torch.randn(batch_size, width, 6, generator=generator) * mask.unsqueeze(-1), "attention_mask": mask})
    return result


@pytest.mark.parametrize("loss_class", [CachedGISTEmbedLoss, CachedMultipleNegativesRankingLoss])
def test_sorted_mini_batches_embed_by_length_and_match_the_uncached_loss(loss_class):
    from sentence_transformers.base.losses.gradcache import _create_minibatch

    model = ToyTokenEmbedder().train()
    features = padded_columns(20, 3, seed=5)
    options = {"guide": None, "margin": 0.05, "temperature": 0.1} if loss_class is CachedGISTEmbedLoss else {}
    loss = loss_class(model, mini_batch_size=6, sort_mini_batches_by_length=True, **options)

    def uncached(embeddings):
        if loss_class is CachedGISTEmbedLoss:
            return gist_embed_loss(embeddings[0], embeddings[1], embeddings[2:], margin=0.05, temperature=0.1)
        return multiple_negatives_ranking_loss(embeddings[0], embeddings[1], embeddings[2:])

    # The reference embeds each column in its own length order, in mini-batches of 6 with trailing
    # padding trimmed (as sentence-transformers cuts them), then puts the rows back in batch order.
    model.zero_grad()
    torch.manual_seed(6)
    embeddings, widths = [], []
    for column in features:
        order = torch.argsort(column["attention_mask"].sum(1), stable=True)
        ordered = permute_rows(column, order)
        chunks = [_create_minibatch(ordered, begin, begin + 6) for begin in range(0, 20, 6)]
        widths.append([chunk["attention_mask"].shape[1] for chunk in chunks])
        embedded = torch.cat([model(chunk)["sentence_embedding"] for chunk in chunks])
        embeddings.append(embedded[torch.argsort(order)])
    expected_loss = uncached(embeddings)
    expected_loss.backward()
    expected = (expected_loss.detach(), [p.grad.clone() for p in model.parameters()])
    # Sorting is what shortens the mini-batches: lengths rise from one mini-batch to the next.
    assert all(w == sorted(w) for w in widths) and any(w[0] < 9 for w in widths)
    assert_same(cached_signal(model, loss, features, seed=6), expected)
    assert loss.get_config_dict()["sort_mini_batches_by_length"] is True
    assert "sort_mini_batches_by_length" not in loss_class(model, **options).get_config_dict()


def test_length_order_leaves_columns_it_cannot_reorder_alone():
    assert length_order({"input_ids": torch.randn(4, 6)}) is None  # no attention mask
    assert length_order({"attention_mask": torch.ones(4, 3), "cu_seq_lens_q": torch.tensor([0, 3])}) is None
    assert length_order({"attention_mask": torch.ones(4, 3), "pixel_values": torch.randn(7, 2)}) is None
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    assert length_order({"attention_mask": mask, "input_ids": mask}).tolist() == [1, 3, 2, 0]


def test_restore_order_puts_rows_back_and_passes_gradients_to_the_mini_batches():
    order = torch.tensor([2, 0, 3, 1])
    leaves = [torch.tensor([[2.0], [0.0]], requires_grad=True), torch.tensor([[3.0], [1.0]], requires_grad=True)]
    (restored,) = restore_order(leaves, order)
    assert restored.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    (restored.flatten() * torch.tensor([10.0, 11.0, 12.0, 13.0])).sum().backward()
    assert leaves[0].grad.flatten().tolist() == [12.0, 10.0] and leaves[1].grad.flatten().tolist() == [13.0, 11.0]
    assert restore_order(leaves, None) is leaves
