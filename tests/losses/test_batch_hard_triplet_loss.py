"""embedplug.losses.BatchHardTripletLoss is a drop-in for sentence-transformers' class of the same name."""

from __future__ import annotations

import functools
import inspect

import pytest
import torch
from _support import KERNEL_DISTANCES, bundled_model_path, label_structures, st_distance_function

import embedplug
from embedplug.functional import batch_hard_triplet_loss
from embedplug.losses import BatchHardTripletLoss, BatchHardTripletLossDistanceFunction

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
STBatchHardTripletLoss = st_losses.BatchHardTripletLoss
STDistance = st_losses.BatchHardTripletLossDistanceFunction


def st_loss_and_grad(embeddings, labels, distance_metric, margin=5):
    x = embeddings.detach().clone().requires_grad_()
    loss = STBatchHardTripletLoss(None, distance_metric=distance_metric, margin=margin).batch_hard_triplet_loss(labels, x)
    loss.backward()
    return loss.detach(), x.grad


def our_loss_and_grad(embeddings, labels, distance_metric, margin=5):
    x = embeddings.detach().clone().requires_grad_()
    loss = BatchHardTripletLoss(None, distance_metric=distance_metric, margin=margin).compute_loss_from_embeddings(
        [x], labels
    )
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("distance", KERNEL_DISTANCES)
@pytest.mark.parametrize("n", [1, 2, 5, 64, 300])
def test_parity_with_sentence_transformers(distance, n):
    generator = torch.Generator().manual_seed(10 + n)
    metric = st_distance_function(distance)
    for name, labels in label_structures(n, generator).items():
        embeddings = torch.randn(n, 32, generator=generator)
        expected_loss, expected_grad = st_loss_and_grad(embeddings, labels, metric, margin=0.5)
        loss, grad = our_loss_and_grad(embeddings, labels, metric, margin=0.5)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-6, msg=name)


def test_parity_with_exact_ties():
    # Small integers: distances are exact, so ties are real and the first index must win as in torch.max.
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randint(-2, 3, (40, 3), generator=generator).float()
    labels = torch.randint(0, 5, (40,), generator=generator)
    for distance in KERNEL_DISTANCES:
        metric = st_distance_function(distance)
        expected_loss, expected_grad = st_loss_and_grad(embeddings, labels, metric)
        loss, grad = our_loss_and_grad(embeddings, labels, metric)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-5)


def test_our_distance_functions_run_the_kernel_and_match():
    generator = torch.Generator().manual_seed(2)
    embeddings = torch.randn(100, 16, generator=generator)
    labels = torch.arange(100) // 4
    pairs = [
        (BatchHardTripletLossDistanceFunction.euclidean_distance, STDistance.euclidean_distance),
        (BatchHardTripletLossDistanceFunction.eucledian_distance, STDistance.eucledian_distance),
        (BatchHardTripletLossDistanceFunction.cosine_distance, STDistance.cosine_distance),
        (
            functools.partial(BatchHardTripletLossDistanceFunction.euclidean_distance, squared=True),
            functools.partial(STDistance.euclidean_distance, squared=True),
        ),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(
            our_loss_and_grad(embeddings, labels, ours), st_loss_and_grad(embeddings, labels, theirs), rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(ours(embeddings), theirs(embeddings), rtol=1e-5, atol=1e-5)


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
    loss = batch_hard_triplet_loss(half, labels)
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
        (torch.randn(4, 3), torch.zeros(4, dtype=torch.long, device="meta"), ValueError, "same device|move them"),
        (torch.randn(4, 3), [0, 0, 1, 1], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input_gets_a_clear_error(embeddings, labels, error, match):
    with pytest.raises(error, match=match):
        batch_hard_triplet_loss(embeddings, labels)


def test_unknown_distance_name_is_a_clear_error():
    with pytest.raises(ValueError, match="expected one of"):
        batch_hard_triplet_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), distance="manhattan")


def test_labels_of_shape_n_by_1_are_accepted_like_sentence_transformers():
    embeddings = torch.randn(8, 4)
    labels = (torch.arange(8) // 2).unsqueeze(1)
    expected, _ = st_loss_and_grad(embeddings, labels, STDistance.euclidean_distance)
    torch.testing.assert_close(batch_hard_triplet_loss(embeddings, labels), expected)


def test_constructor_attributes_config_and_citation_match():
    ours_signature = inspect.signature(BatchHardTripletLoss.__init__).parameters
    theirs_signature = inspect.signature(STBatchHardTripletLoss.__init__).parameters
    assert list(ours_signature) == list(theirs_signature)
    assert ours_signature["margin"].default == theirs_signature["margin"].default
    assert ours_signature["distance_metric"].default.__name__ == theirs_signature["distance_metric"].default.__name__
    model = torch.nn.Linear(2, 2)
    ours, theirs = BatchHardTripletLoss(model), STBatchHardTripletLoss(model)
    assert ours.get_config_dict() == theirs.get_config_dict()
    assert ours.citation == theirs.citation
    assert ours.triplet_margin == theirs.triplet_margin
    assert ours.model is model and ours.sentence_embedder is model
    replacement = torch.nn.Linear(2, 2)
    ours.sentence_embedder = replacement
    assert ours.model is replacement and [name for name, _ in ours.named_children()] == ["model"]
    assert ours.get_triplet_mask(torch.tensor([0, 0, 1])).equal(theirs.get_triplet_mask(torch.tensor([0, 0, 1])))


def test_registered_as_builtin_plugin():
    assert embedplug.get_loss("BatchHardTripletLoss") is BatchHardTripletLoss


@pytest.mark.slow
def test_trains_real_model_with_sentence_transformer_trainer(tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    model = SentenceTransformer(str(bundled_model_path()), device="cpu")
    model.max_seq_length = 32
    texts = [
        ("The cat sat on the mat.", 0), ("A kitten sleeps in the sun.", 0), ("Dogs bark at strangers.", 0),
        ("Stocks fell sharply today.", 1), ("The market rallied on earnings.", 1), ("Bond yields rose again.", 1),
        ("It rained all afternoon.", 2), ("A storm is coming tonight.", 2), ("Snow covered the hills.", 2),
        ("The team won the final.", 3), ("He scored two goals.", 3), ("The match ended in a draw.", 3),
    ]
    dataset = Dataset.from_dict({"sentence": [t for t, _ in texts], "label": [c for _, c in texts]})
    loss = BatchHardTripletLoss(model, margin=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=12, max_steps=3, learning_rate=5e-5,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=0,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    trainer.train()
    assert trainer.loss.model is not None
    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3 and all(torch.isfinite(torch.tensor(logged)))
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))
    model.save(str(tmp_path / "model"))
    card = (tmp_path / "model" / "README.md").read_text()
    assert "BatchHardTripletLoss" in card
    assert "hermans2017defense" in card
    assert '"margin": 0.5' in card
