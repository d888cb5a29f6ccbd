"""Batch-sampler throughput at 1M labels: PKBatchSampler against pytorch-metric-learning's MPerClassSampler.

Run the measurement with::

    .venv/bin/python -m pytest benchmarks/test_sampler_throughput.py --benchmark-enable --benchmark-only -s

With benchmarks disabled (the project default, ``--benchmark-disable``) every function runs once on a few
batches, as a smoke test, and the peer is skipped. Reported per test (``extra_info`` and printed):
``batches_per_second``; the peer test also prints ``embedplug / peer``, measured in the same run.

Workload: 1,000,000 labels over 250,000 classes (4 samples per class on average, Poisson-like sizes), batches
of P=8 classes × K=4 samples. Each timed round starts a new epoch, so the per-epoch work (shuffling 1M
indices within classes) is included.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from embedplug.samplers import PKBatchSampler

NUM_LABELS = 1_000_000
NUM_CLASSES = 250_000
P, K = 8, 4
BATCHES_TIMED = 4096  # per round when benchmarking: four of the sampler's planning blocks
BATCHES_SMOKE = 64
PEER_BATCHES_TIMED = 128  # MPerClassSampler is ~100x slower at this size; fewer batches, same rate

_measured: dict[str, float] = {}


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, NUM_CLASSES, NUM_LABELS)


def _rate(benchmark, batches: int) -> float | None:
    if benchmark.disabled or benchmark.stats is None:
        return None
    rate = batches / benchmark.stats.stats.mean
    benchmark.extra_info["batches_per_second"] = round(rate, 1)
    return rate


def test_pk_construction_1m_labels(benchmark, labels):
    """Building the sampler: factorising 1M labels and grouping indices by class (vectorised, once)."""
    benchmark.group = "sampler construction, 1M labels"
    sampler = benchmark.pedantic(PKBatchSampler.from_labels, args=(labels,), kwargs={"p": P, "k": K}, rounds=3)
    assert sampler.label_groups.num_samples == NUM_LABELS
    assert len(sampler) >= NUM_LABELS // (P * K)


def test_pk_throughput_1m_labels(benchmark, labels):
    benchmark.group = "sampler throughput, 1M labels"
    sampler = PKBatchSampler.from_labels(labels, p=P, k=K, seed=0)
    batches = BATCHES_SMOKE if benchmark.disabled else BATCHES_TIMED
    epochs = itertools.count()

    def new_epoch():
        sampler.set_epoch(next(epochs))
        return (), {}

    def take_batches():
        return list(itertools.islice(sampler, batches))

    taken = benchmark.pedantic(take_batches, setup=new_epoch, rounds=3, iterations=1)
    assert len(taken) == batches and all(len(batch) == P * K for batch in taken)
    rate = _rate(benchmark, batches)
    if rate is not None:
        _measured["embedplug"] = rate
        print(f"\nPKBatchSampler: {rate:,.0f} batches/s (P={P}, K={K}, {NUM_LABELS:,} labels)")


def test_peer_pytorch_metric_learning_m_per_class_1m_labels(benchmark, labels):
    """The peer: MPerClassSampler yields flat indices; a batch is P*K consecutive ones."""
    if benchmark.disabled:
        pytest.skip("peer timing only when benchmarking (its construction alone takes seconds at 1M labels)")
    samplers = pytest.importorskip("pytorch_metric_learning.samplers")
    benchmark.group = "sampler throughput, 1M labels"
    peer = samplers.MPerClassSampler(
        labels, m=K, batch_size=P * K, length_before_new_iter=PEER_BATCHES_TIMED * P * K
    )

    def take_batches():
        flat = list(iter(peer))
        return [flat[start : start + P * K] for start in range(0, len(flat), P * K)]

    taken = benchmark.pedantic(take_batches, rounds=3, iterations=1)
    assert len(taken) == PEER_BATCHES_TIMED
    rate = _rate(benchmark, PEER_BATCHES_TIMED)
    message = f"\nMPerClassSampler: {rate:,.0f} batches/s"
    if "embedplug" in _measured:
        ratio = _measured["embedplug"] / rate
        benchmark.extra_info["embedplug_over_peer"] = round(ratio, 1)
        message += f"; PKBatchSampler / MPerClassSampler = {ratio:,.1f}x"
    print(message)
