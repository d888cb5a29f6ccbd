"""BatchSemiHardTripletLoss and BatchAllTripletLoss forward+backward: embedplug fused vs reference vs
sentence-transformers, with one torch.mm (the GEMM floor) in the same run.

    pytest benchmarks/test_batch_mining_bench.py --benchmark-enable
    pytest benchmarks/test_batch_mining_bench.py --benchmark-enable -k "large_classes"   # memory at N=16384
"""

from __future__ import annotations

import pytest
import torch

from embedplug.bench import batch_mining_cases
from embedplug.bench.memory import peak_extra_memory_bytes

CASES = [
    (loss, implementation)
    for loss in batch_mining_cases.LOSSES
    for implementation in batch_mining_cases.available_implementations(loss)
]


def _skip_reason(implementation: str, n: int) -> str | None:
    if implementation == "embedplug reference" and n > 4096:
        return "the N x N reference is the sentence-transformers algorithm; measured up to N=4096"
    if implementation.startswith("sentence-transformers") and n > 8192:
        return "sentence-transformers needs several N x N temporaries; measured up to N=8192"
    return None


@pytest.mark.parametrize("dim", [384])
@pytest.mark.parametrize("n", [1024, 2048, 4096, 8192, 16384])
@pytest.mark.parametrize("loss, implementation", CASES)
def test_batch_mining_forward_backward(benchmark, record, loss, implementation, n, dim):
    reason = _skip_reason(implementation, n)
    if reason:
        pytest.skip(reason)
    benchmark.group = f"{loss} N={n} D={dim}"
    fn = batch_mining_cases.LOSSES[loss][implementation]
    inputs = batch_mining_cases.make_inputs(n, dim)
    peak = peak_extra_memory_bytes(lambda: fn(inputs))
    benchmark.pedantic(fn, args=(inputs,), rounds=3, warmup_rounds=0, iterations=1)
    record(loss, implementation, n, dim, benchmark, peak)


@pytest.mark.parametrize("n", [16384])
def test_batch_all_large_classes_memory(benchmark, record, n):
    """8 labels (K = N / 8): sentence-transformers would need pairs x N = N^3 / 8 floats (2 TiB here)."""
    dim = 384
    inputs = batch_mining_cases.make_inputs(n, dim, samples_per_class=n // 8)
    fn = batch_mining_cases.LOSSES["BatchAllTripletLoss"]["embedplug fused"]
    peak = peak_extra_memory_bytes(lambda: fn(inputs))
    benchmark.group = f"BatchAllTripletLoss, 8 labels, N={n} D={dim}"
    benchmark.pedantic(fn, args=(inputs,), rounds=1, warmup_rounds=0, iterations=1)
    record("BatchAllTripletLoss (8 labels)", "embedplug fused", n, dim, benchmark, peak)
    assert torch.isfinite(inputs.embeddings.grad).all()
    # The budget; the measured peak is a lower bound of what the call allocates.
    assert peak is None or peak <= 2**30
