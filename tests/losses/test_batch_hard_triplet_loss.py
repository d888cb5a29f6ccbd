"""embedplug.losses.BatchHardTripletLoss is a drop-in for sentence-transformers' class of the same name."""

from __future__ import annotations

import functools

import pytest
import torch
from _support import bundled_model_path, loss_and_grad

from embedplug.functional import batch_hard_triplet_loss
from embedplug.losses import BatchHardTripletLoss, BatchHardTripletLossDistanceFunction

st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
STBatchHardTripletLoss = st_losses.BatchHardTripletLoss
STDistance = st_losses.BatchHardTripletLossDistanceFunction


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
            loss_and_grad(BatchHardTripletLoss, embeddings, labels, ours), loss_and_grad(STBatchHardTripletLoss, embeddings, labels, theirs), rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(ours(embeddings), theirs(embeddings), rtol=1e-5, atol=1e-5)


def test_unknown_distance_name_is_a_clear_error():
    with pytest.raises(ValueError, match="expected one of"):
        batch_hard_triplet_loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), distance="manhattan")


def test_loss_specific_attributes_match():
    # Signature, config and citation: test_labelled_losses_contract.py.
    model = torch.nn.Linear(2, 2)
    ours, theirs = BatchHardTripletLoss(model), STBatchHardTripletLoss(model)
    assert ours.triplet_margin == theirs.triplet_margin
    replacement = torch.nn.Linear(2, 2)
    ours.sentence_embedder = replacement
    # sentence-transformers' child name, so named_parameters() / state_dict() keys are the same.
    assert ours.model is replacement and [name for name, _ in ours.named_children()] == ["sentence_embedder"]
    assert ours.get_triplet_mask(torch.tensor([0, 0, 1])).equal(theirs.get_triplet_mask(torch.tensor([0, 0, 1])))


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
