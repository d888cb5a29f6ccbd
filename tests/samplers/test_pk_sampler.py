"""PKBatchSampler: batch structure, coverage, determinism, class weighting, errors, DDP, plain DataLoader."""

from __future__ import annotations

import collections
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from embedplug.samplers import PKBatchSampler
from embedplug.samplers._base import HAS_SENTENCE_TRANSFORMERS

# derandomize: the examples are the same on every run, so a pass or a failure is reproducible.
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def label_sets(draw):
    """Random label distributions: 1-14 classes of 1-13 samples, shuffled, as ints or strings."""
    sizes = draw(st.lists(st.integers(1, 13), min_size=1, max_size=14))
    labels = [class_id for class_id, size in enumerate(sizes) for _ in range(size)]
    labels = draw(st.permutations(labels))
    if draw(st.booleans()):
        labels = [f"class-{label}" for label in labels]
    return list(labels)


@st.composite
def configurations(draw):
    return {
        "p": draw(st.integers(2, 5)),
        "k": draw(st.integers(2, 4)),
        "small_classes": draw(st.sampled_from(["replace", "skip"])),
        "class_weighting": draw(st.sampled_from(["inverse_usage", "uniform"])),
        "seed": draw(st.integers(0, 2**32)),
    }


def qualifying(labels, k, small_classes):
    counts = collections.Counter(labels)
    minimum = k if small_classes == "skip" else 1
    return {label: count for label, count in counts.items() if count >= minimum}


def check_batch(batch, labels, p, k, qualifying_counts):
    """P groups of K consecutive indices, one class per group, P distinct classes; K distinct when possible."""
    assert len(batch) == p * k
    assert all(isinstance(index, int) and 0 <= index < len(labels) for index in batch)
    groups = [batch[g * k : (g + 1) * k] for g in range(p)]
    group_labels = []
    for group in groups:
        group_label = {labels[i] for i in group}
        assert len(group_label) == 1, group
        (label,) = group_label
        assert label in qualifying_counts
        # Documented exception: a class with fewer than K samples repeats them (small_classes="replace").
        assert len(set(group)) == min(k, qualifying_counts[label])
        group_labels.append(label)
    assert len(set(group_labels)) == p


@PROPERTY_SETTINGS
@given(labels=label_sets(), config=configurations())
def test_every_batch_is_p_classes_by_k_samples_and_every_sample_is_seen(labels, config):
    p, k = config["p"], config["k"]
    counts = qualifying(labels, k, config["small_classes"])
    assume(len(counts) >= p)
    sampler = PKBatchSampler.from_labels(labels, **config)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for batch in batches:
            check_batch(batch, labels, p, k, counts)
        seen = {index for batch in batches for index in batch}
        # Coverage: every sample of every class the sampler draws from appears in every epoch.
        assert seen == {i for i, label in enumerate(labels) if label in counts}


@PROPERTY_SETTINGS
@given(labels=label_sets(), config=configurations())
def test_length_is_the_fewest_batches_that_place_every_chunk(labels, config):
    p, k = config["p"], config["k"]
    counts = qualifying(labels, k, config["small_classes"])
    assume(len(counts) >= p)
    chunks = [math.ceil(count / k) for count in counts.values()]
    # At most one chunk of a class per batch, P chunks per batch.
    assert len(PKBatchSampler.from_labels(labels, **config)) == max(math.ceil(sum(chunks) / p), max(chunks))


@PROPERTY_SETTINGS
@given(labels=label_sets(), config=configurations(), epoch=st.integers(0, 1000))
def test_order_is_a_pure_function_of_seed_and_epoch(labels, config, epoch):
    assume(len(qualifying(labels, config["k"], config["small_classes"])) >= config["p"])
    first = PKBatchSampler.from_labels(labels, **config)
    first.set_epoch(epoch)
    expected = list(first)
    assert list(first) == expected  # iterating again replays the epoch
    first.set_epoch(epoch + 1)
    list(first)
    first.set_epoch(epoch)
    assert list(first) == expected  # no state leaks from other epochs
    second = PKBatchSampler.from_labels(list(labels), **config)
    second.set_epoch(epoch)
    assert list(second) == expected  # a fresh instance, as after a restart
    torch.manual_seed(epoch)
    np.random.seed(epoch)
    assert list(second) == expected  # global RNG state plays no part


@PROPERTY_SETTINGS
@given(labels=label_sets(), config=configurations())
def test_different_epochs_and_seeds_give_different_orders(labels, config):
    counts = qualifying(labels, config["k"], config["small_classes"])
    assume(len(counts) >= config["p"])
    # Enough samples that two independent orders coincide with negligible probability.
    assume(sum(counts.values()) >= 24)
    sampler = PKBatchSampler.from_labels(labels, **config)
    epoch_zero = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != epoch_zero
    other_seed = PKBatchSampler.from_labels(labels, **{**config, "seed": config["seed"] + 1})
    assert list(other_seed) != epoch_zero


def test_skip_leaves_out_classes_smaller_than_k_and_replace_repeats_them():
    labels = [0] * 8 + [1] * 8 + [2] * 8 + [3] * 2 + [4]
    skipped = {i for batch in PKBatchSampler.from_labels(labels, p=2, k=4, small_classes="skip") for i in batch}
    assert skipped == set(range(24))
    replaced = list(PKBatchSampler.from_labels(labels, p=2, k=4, small_classes="replace"))
    groups = [batch[g * 4 : (g + 1) * 4] for batch in replaced for g in range(2)]
    class_3 = [group for group in groups if labels[group[0]] == 3]
    class_4 = [group for group in groups if labels[group[0]] == 4]
    assert class_3 and class_4
    # Cyclic repetition: each of n < K samples appears floor(K/n) or ceil(K/n) times in its group.
    assert all(collections.Counter(group) == {24: 2, 25: 2} for group in class_3)
    assert all(group == [26, 26, 26, 26] for group in class_4)


def test_inverse_usage_spreads_filler_turns_more_evenly_than_uniform():
    # One class with 100 chunks sets the epoch length (100 batches); the 20 rare classes fill the other
    # 3 slots of each batch, 300 turns for 20 classes. Weighting by 1 / (1 + turns so far) evens them out
    # (mildly: a class used 10 times still has half the weight of one used 4 times).
    labels = [0] * 400 + [c for c in range(1, 21) for _ in range(4)]

    def spread(weighting, seed):
        turns = collections.Counter()
        for batch in PKBatchSampler.from_labels(labels, p=4, k=4, class_weighting=weighting, seed=seed):
            turns.update(labels[batch[g * 4]] for g in range(4))
        assert turns[0] == 100
        rare = [turns[c] for c in range(1, 21)]
        assert sum(rare) == 300
        return max(rare) - min(rare)

    inverse = [spread("inverse_usage", seed) for seed in range(5)]
    uniform = [spread("uniform", seed) for seed in range(5)]
    assert sum(inverse) < sum(uniform)


def test_epoch_with_a_dominant_class_still_covers_it():
    labels = [0] * 100 + list(range(1, 11)) * 2
    sampler = PKBatchSampler.from_labels(labels, p=3, k=4)
    assert len(sampler) == 25  # the dominant class gives at most one chunk per batch
    batches = list(sampler)
    assert {i for batch in batches for i in batch} == set(range(len(labels)))


def test_plain_dataloader_yields_whole_batches():
    labels = torch.arange(60) % 6
    features = torch.randn(60, 3)
    dataset = torch.utils.data.TensorDataset(features, labels)
    sampler = PKBatchSampler.from_labels(labels, p=3, k=5, seed=11)
    loader = DataLoader(dataset, batch_sampler=sampler)
    assert len(loader) == len(sampler) == 4
    for batch_features, batch_labels in loader:
        assert batch_features.shape == (15, 3)
        assert sorted(collections.Counter(batch_labels.tolist()).values()) == [5, 5, 5]


def test_labels_from_a_datasets_column_honour_select_and_shuffle():
    datasets = pytest.importorskip("datasets")
    labels = [i % 5 for i in range(40)]
    dataset = datasets.Dataset.from_dict({"text": [str(i) for i in range(40)], "label": labels})
    view = dataset.shuffle(seed=1).select(range(30))
    view_labels = view["label"]
    sampler = PKBatchSampler(view, batch_size=6, drop_last=False, valid_label_columns=["score", "label"], k=2)
    for batch in sampler:
        check_batch(batch, list(view_labels), 3, 2, collections.Counter(view_labels))
    assert list(sampler) == list(PKBatchSampler.from_labels(list(view_labels), p=3, k=2))


@pytest.mark.skipif(not HAS_SENTENCE_TRANSFORMERS, reason="sentence-transformers not installed")
def test_is_a_sentence_transformers_default_batch_sampler():
    from sentence_transformers.base.sampler import DefaultBatchSampler

    assert issubclass(PKBatchSampler, DefaultBatchSampler)


def test_sampler_pickles_and_keeps_its_epoch():
    sampler = PKBatchSampler.from_labels([i % 4 for i in range(32)], p=2, k=4, seed=3)
    sampler.set_epoch(5)
    clone = pickle.loads(pickle.dumps(sampler))
    assert list(clone) == list(sampler)


# ----- distributed


def test_own_rank_awareness_splits_an_epoch_into_equal_disjoint_shares():
    labels = [i % 7 for i in range(7 * 9)]
    shares = [list(PKBatchSampler.from_labels(labels, p=3, k=4, num_replicas=3, rank=r, seed=2)) for r in range(3)]
    assert len({len(share) for share in shares}) == 1
    assert len(shares[0]) == len(PKBatchSampler.from_labels(labels, p=3, k=4, num_replicas=3, rank=0))
    all_batches = [tuple(batch) for share in shares for batch in share]
    assert len(set(all_batches)) == len(all_batches)
    for batch in all_batches:
        check_batch(list(batch), labels, 3, 4, collections.Counter(labels))
    assert {i for batch in all_batches for i in batch} == set(range(len(labels)))


@pytest.mark.parametrize("num_processes", [2, 3])
def test_accelerate_sharding_gives_each_process_different_complete_batches(num_processes):
    """What sentence-transformers' trainer does under DDP: accelerate wraps the sampler in BatchSamplerShard."""
    accelerate_data_loader = pytest.importorskip("accelerate.data_loader")
    labels = [i % 10 for i in range(10 * 7)]
    dataset = list(range(len(labels)))  # item i is i: the loader's batches are the indices themselves
    shards = []
    for process_index in range(num_processes):
        sampler = PKBatchSampler.from_labels(labels, p=4, k=3, seed=9)
        loader = accelerate_data_loader.prepare_data_loader(
            DataLoader(dataset, batch_sampler=sampler),
            num_processes=num_processes,
            process_index=process_index,
            put_on_device=False,
            even_batches=False,  # sentence-transformers' trainer sets this for training
        )
        loader.set_epoch(1)
        loader.batch_sampler.batch_sampler.set_epoch(1)  # the trainer reaches through the shard wrapper too
        shards.append([batch.tolist() for batch in loader])
    reference = PKBatchSampler.from_labels(labels, p=4, k=3, seed=9)
    reference.set_epoch(1)
    epoch = list(reference)
    for process_index, shard in enumerate(shards):
        assert shard == epoch[process_index::num_processes]
        for batch in shard:
            check_batch(batch, labels, 4, 3, collections.Counter(labels))
    assert {i for shard in shards for batch in shard for i in batch} == set(range(len(labels)))


# ----- errors


def test_batch_size_not_divisible_by_k():
    with pytest.raises(ValueError, match=r"batch_size=30 is not divisible by k=4"):
        PKBatchSampler(None, batch_size=30, drop_last=False, labels=[0, 1] * 20)


def test_fewer_than_p_classes_with_enough_samples():
    labels = [0] * 8 + [1] * 8 + [2] * 3
    with pytest.raises(ValueError, match=r"at least P=3 classes.*only 2 of the 3 classes have >= 4 samples"):
        PKBatchSampler.from_labels(labels, p=3, k=4, small_classes="skip")
    with pytest.raises(ValueError, match=r"at least P=4 classes.*only 3 distinct classes"):
        PKBatchSampler.from_labels(labels, p=4, k=4)
    assert len(PKBatchSampler.from_labels(labels, p=3, k=4)) > 0


def test_too_few_classes_under_replace_does_not_suggest_replace():
    # small_classes='replace' is the default and already in use: the fix is a smaller P.
    with pytest.raises(ValueError) as raised:
        PKBatchSampler.from_labels([0] * 8 + [1] * 8 + [2] * 3, p=4, k=4, small_classes="replace")
    message = str(raised.value)
    assert "use small_classes='replace'" not in message
    assert "at most 3" in message and "batch_size of at most 12" in message


def test_no_label_column():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict({"anchor": ["a", "b"], "positive": ["c", "d"]})
    with pytest.raises(ValueError, match=r"No label column.*\['label', 'score'\].*\['anchor', 'positive'\]"):
        PKBatchSampler(dataset, batch_size=8, drop_last=False, valid_label_columns=["label", "score"])
    with pytest.raises(ValueError, match=r"No label column: valid_label_columns is empty"):
        PKBatchSampler(dataset, batch_size=8, drop_last=False)
    with pytest.raises(ValueError, match=r"No label column: the dataset \(list\) has no column_names"):
        PKBatchSampler([1, 2, 3], batch_size=8, drop_last=False, valid_label_columns=["label"])


@pytest.mark.parametrize(
    "labels, message",
    [
        ([[0, 1], [1], [2, 3]] * 4, r"labels must be hashable: the label of sample 0 is a list"),
        ([0, 1, 2, {"a": 1}] * 3, r"labels must be hashable: the label of sample 3 is a dict"),
        (np.zeros((12, 2)), r"one hashable label per sample, got an array of shape \(12, 2\)"),
        ([[0, 1]] * 12, r"one hashable label per sample, got an array of shape \(12, 2\)|sample 0 is a list"),
    ],
)
def test_non_hashable_labels(labels, message):
    with pytest.raises(TypeError, match=message):
        PKBatchSampler.from_labels(labels, p=2, k=2)


def test_non_hashable_label_column():
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_dict({"text": list("abcdef"), "label": [[0, 1], [1], [0], [2], [2], [1]]})
    with pytest.raises(TypeError, match=r"labels must be hashable: the label of sample 0"):
        PKBatchSampler(dataset, batch_size=4, drop_last=False, valid_label_columns=["label"], k=2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"k": 1}, r"k \(samples per class per batch\) must be an integer >= 2"),
        ({"batch_size": 4, "k": 4}, r"P must be >= 2"),
        ({"small_classes": "drop"}, r"small_classes must be 'replace' or 'skip'"),
        ({"class_weighting": "frequency"}, r"class_weighting must be 'inverse_usage' or 'uniform'"),
        ({"num_replicas": 2, "rank": 2}, r"rank must be an integer in \[0, 1\]"),
        ({"seed": -1}, r"seed must be a non-negative integer"),
        ({"batch_size": 0}, r"batch_size must be a positive integer"),
    ],
)
def test_invalid_options(options, message):
    arguments = {"batch_size": 8, "drop_last": False, "labels": [0, 1, 2, 3] * 4, **options}
    with pytest.raises(ValueError, match=message):
        PKBatchSampler(None, **arguments)


def test_missing_and_mismatched_labels():
    with pytest.raises(ValueError, match=r"the label of sample 2 is NaN"):
        PKBatchSampler.from_labels([0.0, 1.0, float("nan"), 1.0], p=2, k=2)
    with pytest.raises(ValueError, match=r"labels has 3 entries but the dataset has 4 samples"):
        PKBatchSampler([10, 11, 12, 13], batch_size=4, drop_last=False, k=2, labels=[0, 1, 1])
    with pytest.raises(ValueError, match=r"no samples"):
        PKBatchSampler.from_labels([], p=2, k=2)
    with pytest.raises(ValueError, match=r"p \(classes per batch\) must be an integer >= 2"):
        PKBatchSampler.from_labels([0, 1], p=1, k=2)


def test_epoch_callback_reaches_the_sampler_when_a_multi_process_run_resumes_mid_epoch():
    """Resuming under DDP wraps the loader as SkipBatchSampler -> BatchSamplerShard -> sampler."""
    import types

    accelerate_data_loader = pytest.importorskip("accelerate.data_loader")
    from embedplug.samplers import SamplerEpochCallback

    labels = [i % 10 for i in range(10 * 7)]
    sampler = PKBatchSampler.from_labels(labels, p=4, k=3, seed=9)
    loader = accelerate_data_loader.prepare_data_loader(
        DataLoader(list(range(len(labels))), batch_sampler=sampler),
        num_processes=2,
        process_index=1,
        put_on_device=False,
        even_batches=False,
    )
    resumed = accelerate_data_loader.skip_first_batches(loader, 1)
    resumed.set_epoch(1)  # what the trainer calls on the skipping loader...
    shard_wrapper = resumed.batch_sampler
    if hasattr(getattr(shard_wrapper, "batch_sampler", None), "set_epoch"):
        shard_wrapper.batch_sampler.set_epoch(1)  # ...and through one wrapper
    assert sampler.epoch == 0  # neither reaches through SkipBatchSampler and BatchSamplerShard

    control = object()
    state = types.SimpleNamespace(epoch=1.5)  # the trainer state restored from a mid-epoch checkpoint
    assert SamplerEpochCallback().on_epoch_begin(None, state, control, train_dataloader=loader) is control
    assert sampler.epoch == 1
    reference = PKBatchSampler.from_labels(labels, p=4, k=3, seed=9)
    reference.set_epoch(1)
    assert [batch.tolist() for batch in resumed] == list(reference)[1::2][1:]


def test_works_without_sentence_transformers_or_transformers():
    """from_labels + a plain DataLoader need neither library (the base falls back to torch's BatchSampler)."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys
        sys.modules["sentence_transformers"] = None  # makes every import of them fail
        sys.modules["transformers"] = None
        import torch
        from torch.utils.data import BatchSampler, DataLoader
        from embedplug.samplers import PKBatchSampler, GroupByLabelBatchSampler
        from embedplug.samplers._base import HAS_SENTENCE_TRANSFORMERS
        assert not HAS_SENTENCE_TRANSFORMERS
        labels = torch.arange(24) % 4
        sampler = PKBatchSampler.from_labels(labels, p=2, k=3, seed=1)
        assert isinstance(sampler, BatchSampler)
        sampler.set_epoch(2)
        batches = [batch.tolist() for batch in DataLoader(list(range(24)), batch_sampler=sampler)]
        assert len(batches) == len(sampler) == 4
        assert sorted(i for batch in batches for i in batch) == list(range(24))
        assert len(list(GroupByLabelBatchSampler.from_labels(labels, batch_size=4))) == 6
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
