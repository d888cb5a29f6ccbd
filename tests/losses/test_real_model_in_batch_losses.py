"""GIST and MultipleNegativesRanking losses on the bundled all-MiniLM-L6-v2: parity with
sentence-transformers through real forward passes, the GradCache scenario, MatryoshkaLoss, the trainer.
All slow (real model), kept small: short sequences, tiny batches."""

from __future__ import annotations

import pytest
import torch
from _support import bundled_model_path

from embedplug.losses import (
    CachedGISTEmbedLoss,
    CachedMultipleNegativesRankingLoss,
    GISTEmbedLoss,
    MultipleNegativesRankingLoss,
)

pytestmark = pytest.mark.slow
st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")

TOPICS = ["cats", "stocks", "rain", "football", "cooking", "trains", "music", "gardens"]


def texts(count, offset=0):
    return [f"note {i + offset} on {TOPICS[(i + offset) % len(TOPICS)]} and item {(i * 7) % 13}" for i in range(count)]


@pytest.fixture(scope="module")
def models():
    from sentence_transformers import SentenceTransformer

    path = str(bundled_model_path())
    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = 16
    guide = SentenceTransformer(path, device="cpu")
    guide.max_seq_length = 16
    guide.eval()  # the guide runs under no_grad; eval keeps its dropout off the RNG
    return model, guide


def features(model, columns):
    return [model.preprocess(column) for column in columns]


def loss_and_parameter_grads(model, loss, columns, seed=0):
    model.zero_grad()
    torch.manual_seed(seed)
    value = loss(features(model, columns), None)
    value.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return value.detach(), grads


def assert_same_training_signal(ours, theirs, loss_rtol=1e-5, grad_rtol=1e-4):
    (loss, grads), (expected_loss, expected_grads) = ours, theirs
    torch.testing.assert_close(loss, expected_loss, rtol=loss_rtol, atol=1e-6)
    # Parameter gradients compared as a whole: relative error of the full vector.
    assert ((grads - expected_grads).norm() / expected_grads.norm()).item() < grad_rtol


@pytest.mark.parametrize("guide_max_seq_length", [16, 8])
def test_gist_parity_through_the_model(models, guide_max_seq_length):
    model, guide = models
    guide.max_seq_length = guide_max_seq_length  # 8 < 16 forces re-tokenisation for the guide
    try:
        model.eval()
        columns = [texts(12), texts(12, 100), texts(12, 200)]
        options = dict(temperature=0.05, margin=0.02)
        ours = GISTEmbedLoss(model, guide, **options)
        theirs = st_losses.GISTEmbedLoss(model, guide, **options)
        assert ours.must_retokenize is theirs.must_retokenize is (guide_max_seq_length < 16)
        assert_same_training_signal(
            loss_and_parameter_grads(model, ours, columns), loss_and_parameter_grads(model, theirs, columns)
        )
    finally:
        guide.max_seq_length = 16


def test_mnrl_parity_through_the_model(models):
    model, _ = models
    model.eval()
    columns = [texts(12), texts(12, 100), texts(12, 200)]
    options = dict(directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"))
    assert_same_training_signal(
        loss_and_parameter_grads(model, MultipleNegativesRankingLoss(model, **options), columns),
        loss_and_parameter_grads(model, st_losses.MultipleNegativesRankingLoss(model, **options), columns),
    )


def test_gradcache_gist_at_batch_64_equals_uncached_gist(models):
    # Dropout off: mini-batches of 8 must give the loss and parameter gradients of the whole batch.
    model, guide = models
    model.eval()
    columns = [texts(64), texts(64, 500)]
    cached = CachedGISTEmbedLoss(model, guide, mini_batch_size=8, temperature=0.05, margin=0.01)
    uncached = GISTEmbedLoss(model, guide, temperature=0.05, margin=0.01)
    assert_same_training_signal(
        loss_and_parameter_grads(model, cached, columns), loss_and_parameter_grads(model, uncached, columns)
    )


def test_gradcache_replays_the_dropout_of_the_first_pass(models):
    # Dropout on: the cached loss's gradients must be those of the loss it reports, i.e. of the
    # embeddings drawn with the first pass's dropout masks. Reference: the same mini-batch forward
    # passes in the same RNG order, with gradients, then the uncached GIST loss on them.
    from sentence_transformers.base.losses.gradcache import _create_minibatch

    model, guide = models
    model.train()
    try:
        columns = [texts(64), texts(64, 500)]
        cached = CachedGISTEmbedLoss(model, guide, mini_batch_size=8, temperature=0.05, margin=0.01)
        ours = loss_and_parameter_grads(model, cached, columns, seed=3)

        model.zero_grad()
        torch.manual_seed(3)
        column_features = features(model, columns)
        student, teacher = [], []
        for column in column_features:
            chunks = [_create_minibatch(column, begin, begin + 8) for begin in range(0, 64, 8)]
            student.append(torch.cat([model(dict(chunk))["sentence_embedding"] for chunk in chunks]))
            with torch.no_grad():
                teacher.append(torch.cat([guide(dict(chunk))["sentence_embedding"] for chunk in chunks]))
        expected = GISTEmbedLoss(model, guide, temperature=0.05, margin=0.01).compute_loss_from_embeddings(
            student, guide_embeddings=teacher
        )
        expected.backward()
        expected_grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        assert_same_training_signal(ours, (expected.detach(), expected_grads))

        # And sentence-transformers' CachedGISTEmbedLoss, same seed, draws and replays the same masks.
        theirs_loss = st_losses.CachedGISTEmbedLoss(model, guide, mini_batch_size=8, temperature=0.05, margin=0.01)
        assert_same_training_signal(ours, loss_and_parameter_grads(model, theirs_loss, columns, seed=3))
    finally:
        model.eval()


def test_cached_mnrl_matches_sentence_transformers_with_dropout(models):
    model, _ = models
    model.train()
    try:
        columns = [texts(16), texts(16, 100)]
        options = dict(mini_batch_size=4, directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction")
        assert_same_training_signal(
            loss_and_parameter_grads(model, CachedMultipleNegativesRankingLoss(model, **options), columns, seed=1),
            loss_and_parameter_grads(model, st_losses.CachedMultipleNegativesRankingLoss(model, **options), columns, seed=1),
        )
    finally:
        model.eval()


def test_matryoshka_wraps_cached_gist_like_sentence_transformers(models):
    model, guide = models
    model.eval()
    columns = [texts(16), texts(16, 100)]

    def matryoshka(inner):
        return st_losses.MatryoshkaLoss(model, inner, matryoshka_dims=[384, 64])

    ours = matryoshka(CachedGISTEmbedLoss(model, guide, mini_batch_size=4, temperature=0.05))
    theirs = matryoshka(st_losses.CachedGISTEmbedLoss(model, guide, mini_batch_size=4, temperature=0.05))
    assert_same_training_signal(
        loss_and_parameter_grads(model, ours, columns), loss_and_parameter_grads(model, theirs, columns)
    )


def test_trains_with_sentence_transformer_trainer_self_guided(models, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    model, _ = models
    dataset = Dataset.from_dict({"anchor": texts(16), "positive": texts(16, 100)})
    loss = GISTEmbedLoss(model, guide=None, margin=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, max_steps=2, learning_rate=5e-5,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    trainer.train()
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(logged)))
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    model.save(str(tmp_path / "model"))
    card = (tmp_path / "model" / "README.md").read_text()
    assert "GISTEmbedLoss" in card and "solatorio2024gistembed" in card
    with torch.no_grad():  # leave the shared model as the other tests expect it
        for parameter, original in zip(model.parameters(), before):
            parameter.copy_(original)
    model.eval()
