"""for_trainer: the batch_sampler argument for sentence-transformers' training arguments."""

from __future__ import annotations

import pickle

import pytest

import embedplug
from embedplug.samplers import (
    BUILTIN_SAMPLERS,
    GroupByLabelBatchSampler,
    NoDuplicatesBatchSampler,
    PKBatchSampler,
    TrainerBatchSamplerFactory,
    for_trainer,
)

datasets = pytest.importorskip("datasets")

TRAINER_ARGUMENTS = {"batch_size": 8, "drop_last": False, "valid_label_columns": ["label", "score"], "seed": 42}


@pytest.fixture
def dataset():
    return datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(32)], "label": [i % 4 for i in range(32)]})


def test_builtin_samplers_are_exported_and_registered_under_their_class_names():
    assert BUILTIN_SAMPLERS == (PKBatchSampler, GroupByLabelBatchSampler, NoDuplicatesBatchSampler)
    for sampler_class in BUILTIN_SAMPLERS:
        assert embedplug.get_sampler(sampler_class.__name__) is sampler_class


@pytest.mark.parametrize("sampler_class", BUILTIN_SAMPLERS)
def test_factory_builds_the_sampler_the_way_the_trainer_calls_it(dataset, sampler_class):
    factory = for_trainer(sampler_class.__name__)
    # sentence-transformers' get_batch_sampler: factory(dataset, batch_size=..., drop_last=..., ...)
    sampler = factory(dataset, generator=None, **TRAINER_ARGUMENTS)
    assert type(sampler) is sampler_class
    assert sampler.batch_size == 8 and sampler.seed == 42
    assert len(list(sampler)) == len(sampler) > 0


def test_options_reach_the_sampler_and_the_factory_pickles(dataset):
    factory = for_trainer("PKBatchSampler", k=2, class_weighting="uniform")
    sampler = factory(dataset, **TRAINER_ARGUMENTS)
    assert (sampler.p, sampler.k, sampler.class_weighting) == (4, 2, "uniform")
    # The training arguments are pickled into every checkpoint (training_args.bin).
    clone = pickle.loads(pickle.dumps(factory))
    assert clone == factory
    assert list(clone(dataset, **TRAINER_ARGUMENTS)) == list(sampler)
    assert repr(factory) == "for_trainer('PKBatchSampler', k=2, class_weighting='uniform')"


def test_a_class_can_be_given_instead_of_a_name(dataset):
    assert type(for_trainer(PKBatchSampler, k=4)(dataset, **TRAINER_ARGUMENTS)) is PKBatchSampler


class EveryOtherSampler(PKBatchSampler):
    """A third-party sampler: P×K batches, every other one."""

    def __iter__(self):
        for number, batch in enumerate(super().__iter__()):
            if number % 2 == 0:
                yield batch

    def __len__(self):
        return (super().__len__() + 1) // 2


class ThirdPartyPlugin:
    @embedplug.hookimpl
    def embedplug_register_samplers(self, register):
        register(EveryOtherSampler, name="every_other")


@pytest.fixture
def third_party_plugin():
    embedplug.registry.add_plugin(ThirdPartyPlugin(), name="test-third-party-sampler")
    yield
    embedplug.registry.remove_plugin("test-third-party-sampler")


def test_third_party_samplers_from_the_registry_work_too(dataset, third_party_plugin):
    sampler = for_trainer("every_other", k=4)(dataset, **TRAINER_ARGUMENTS)
    assert type(sampler) is EveryOtherSampler
    assert len(list(sampler)) == len(sampler)


def test_errors_are_raised_by_for_trainer_not_inside_training():
    with pytest.raises(ValueError, match=r"batch_size, seed cannot be given as options, the trainer passes them"):
        for_trainer("PKBatchSampler", batch_size=16, seed=1)
    with pytest.raises(TypeError, match=r"PKBatchSampler does not accept the options \['kk'\]"):
        for_trainer("PKBatchSampler", kk=4)
    with pytest.raises(TypeError, match=r"GroupByLabelBatchSampler does not accept the options \['k'\]"):
        for_trainer("GroupByLabelBatchSampler", k=4)
    with pytest.raises(Exception, match=r"PKSampler"):
        for_trainer("PKSampler")
    with pytest.raises(TypeError, match=r"takes a sampler name or class, got int"):
        for_trainer(3)


def test_sentence_transformers_training_arguments_accept_the_factory():
    training_args = pytest.importorskip("sentence_transformers.sentence_transformer.training_args")
    args = training_args.SentenceTransformerTrainingArguments(
        output_dir="unused", batch_sampler=for_trainer("PKBatchSampler", k=4), report_to="none", use_cpu=True
    )
    assert isinstance(args.batch_sampler, TrainerBatchSamplerFactory)
    args.to_dict()  # callables are left out of the serialised arguments
    pickle.loads(pickle.dumps(args))
