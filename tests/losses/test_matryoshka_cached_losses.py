"""sentence-transformers' MatryoshkaLoss around embedplug's cached losses, on the bundled all-MiniLM-L6-v2.

MatryoshkaLoss recognises a GradCache loss by ``uses_gradient_cache`` and decorates its
``calculate_loss`` (``CachedLossDecorator``) instead of the model's forward; embedplug's cached losses
take that path too. These tests check that the loss and every parameter gradient equal those of
MatryoshkaLoss around sentence-transformers' own class, over weights, dimension sampling, dropout
(train mode), uneven mini-batches, length-sorted mini-batches and the no-grad path. Slow (real model).
"""

from __future__ import annotations

import random

import pytest
import torch
from _support import bundled_model_path

from embedplug.losses import CachedGISTEmbedLoss, CachedMultipleNegativesRankingLoss

pytestmark = pytest.mark.slow
st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")

WORDS = ["cats", "stocks", "rain", "football", "cooking", "trains", "music", "gardens", "rivers"]


def texts(count, offset=0):
    return [f"{WORDS[(i + offset) % len(WORDS)]} note {i + offset} item {(i * 5) % 11}" for i in range(count)]


@pytest.fixture(scope="module")
def models():
    from sentence_transformers import SentenceTransformer

    path = str(bundled_model_path())
    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = 12
    guide = SentenceTransformer(path, device="cpu")
    guide.max_seq_length = 12
    guide.eval()
    return model, guide


def run(model, loss, columns, seed=0, grad=True):
    model.zero_grad()
    torch.manual_seed(seed)
    random.seed(seed)  # MatryoshkaLoss samples n_dims_per_step dimensions with `random`
    features = [model.preprocess(column) for column in columns]
    if not grad:
        with torch.no_grad():
            return loss(features, None).detach(), None
    value = loss(features, None)
    value.backward()
    return value.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def assert_same(ours, theirs):
    (loss, grads), (expected_loss, expected_grads) = ours, theirs
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    if expected_grads is not None:
        assert ((grads - expected_grads).norm() / expected_grads.norm()).item() < 1e-4


INNER = {
    "CachedMultipleNegativesRankingLoss": (CachedMultipleNegativesRankingLoss, dict(scale=20.0)),
    "CachedGISTEmbedLoss": (CachedGISTEmbedLoss, dict(temperature=0.05, margin=0.02)),
}
CASES = {
    "weights": dict(matryoshka_dims=[384, 96, 24], matryoshka_weights=[1.0, 0.5, 2.0]),
    "sampled_dims": dict(matryoshka_dims=[384, 128, 64, 16], n_dims_per_step=2),
    "full_dim_missing": dict(matryoshka_dims=[200, 32]),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("inner", INNER)
@pytest.mark.parametrize("mode", ["eval", "train_dropout"])
def test_matryoshka_around_embedplug_cached_loss_equals_sentence_transformers(models, inner, case, mode):
    model, guide = models
    model.train(mode == "train_dropout")
    try:
        ours_class, options = INNER[inner]
        theirs_class = getattr(st_losses, inner)
        if inner == "CachedGISTEmbedLoss":
            options = {**options, "guide": guide}
        columns = [texts(7), texts(7, 40), texts(7, 80)]  # 7 rows in mini-batches of 3: one uneven

        def wrapped(loss_class):
            return st_losses.MatryoshkaLoss(model, loss_class(model, mini_batch_size=3, **options), **CASES[case])

        assert_same(run(model, wrapped(ours_class), columns), run(model, wrapped(theirs_class), columns))
    finally:
        model.eval()


@pytest.mark.parametrize("inner", INNER)
def test_no_grad_value_and_length_sorted_mini_batches(models, inner):
    model, guide = models
    model.eval()
    ours_class, options = INNER[inner]
    if inner == "CachedGISTEmbedLoss":
        options = {**options, "guide": guide}
    columns = [texts(9), [t + " and more words here" * (i % 3) for i, t in enumerate(texts(9, 30))]]
    dims = dict(matryoshka_dims=[384, 64])
    theirs = st_losses.MatryoshkaLoss(model, getattr(st_losses, inner)(model, mini_batch_size=4, **options), **dims)
    ours = st_losses.MatryoshkaLoss(model, ours_class(model, mini_batch_size=4, **options), **dims)
    ours_sorted = st_losses.MatryoshkaLoss(
        model, ours_class(model, mini_batch_size=4, sort_mini_batches_by_length=True, **options), **dims
    )
    expected = run(model, theirs, columns)
    assert_same(run(model, ours, columns), expected)
    assert_same(run(model, ours_sorted, columns), expected)
    assert_same(run(model, ours, columns, grad=False), run(model, theirs, columns, grad=False))
